// What the browser tests share: Debian's Chromium driven by playwright-core, where screenshots
// go, logging an agent in on the reference desktop, and opening the admin console.

import { mkdirSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { repo } from "./centre.mjs";

export const shots = path.join(repo, "target/browser");

/** Debian's Chromium, headless; without the background-networking flags it tries to reach Google. */
export async function launchChromium() {
  mkdirSync(shots, { recursive: true });
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/** Fills the desktop's login form (open mode: with the desktop token) and waits for the desk. */
export async function logIn(page, agent, dn) {
  const form = page.locator("#login");
  await form.getByLabel("Agent", { exact: true }).fill(agent);
  await form.getByLabel("DN (extension)").fill(dn);
  await form.locator("summary").click();
  await form.getByLabel("Desktop token (servers in open mode only)").fill("desk-secret");
  await form.getByRole("button", { name: "Log in" }).click();
  await page.locator("#desk").waitFor({ state: "visible" });
}

/**
 * A new tab on the admin console at `base` (`http://host:port`), logged out. `page.problems`
 * collects script errors; a failed WebSocket attempt while the server is away is not one.
 */
export async function adminPage(browser, base) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push(e.message));
  page.on("console", (m) => {
    if (m.type() === "error" && !/WebSocket connection to .* failed/.test(m.text())) page.problems.push(m.text());
  });
  await page.goto(`${base}/admin/`);
  return page;
}

/** Types `token` into the console's login form and sends it. */
export async function adminLogIn(page, token) {
  await page.locator("#login").getByLabel("Admin token").fill(token);
  await page.locator("#login").getByRole("button", { name: "Log in" }).click();
}

/** A full-page screenshot in `shots`, for a person to look at. */
export async function screenshot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}
