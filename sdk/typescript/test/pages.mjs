// What the browser tests share: Debian's Chromium driven by playwright-core, where screenshots
// go, and logging an agent in on the reference desktop.

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
