// The reconnecting banner: the page stays open while its connection is cut, says so plainly, and
// comes back with its record when the network does.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { startServer, centre, proxy, repo } from "./centre.mjs";

const shots = path.join(repo, "target/browser");
let server, browser;

before(async () => {
  mkdirSync(shots, { recursive: true });
  server = await startServer();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

test("while the connection is lost the page shows a reconnecting banner, and keeps its record when it is back", async () => {
  const c = await centre(server);
  // The page and its WebSocket go through a proxy that plays the network.
  const net = await proxy(server.http);
  const page = await (await browser.newContext()).newPage();
  await page.goto(net.url.replace("ws://", "http://").replace("/ws", "/desk/"));
  const form = page.locator("#login");
  await form.getByLabel("Agent", { exact: true }).fill("1501");
  await form.getByLabel("DN (extension)").fill("7501");
  await form.locator("summary").click();
  await form.getByLabel("Desktop token (servers in open mode only)").fill("desk-secret");
  await form.getByRole("button", { name: "Log in" }).click();
  await page.locator("#desk").waitFor({ state: "visible" });
  await c.answered("C50", "R50", "7501", { name: "Kim Park" });
  const badge = page.locator('article[data-record="R50"] .badge');
  await badge.filter({ hasText: "full" }).waitFor();

  net.cut(true);
  const banner = page.getByRole("alert").filter({ hasText: "reconnecting" });
  await banner.waitFor({ state: "visible" });
  assert.equal(await badge.textContent(), "full", "the record stays on the page");
  const save = page.locator('article[data-record="R50"]').getByRole("button", { name: "Save" });
  assert.equal(await save.isDisabled(), true, "nothing can be sent while reconnecting");
  await page.screenshot({ path: path.join(shots, "08-reconnecting-banner.png"), fullPage: true });

  net.heal();
  await banner.waitFor({ state: "hidden", timeout: 15000 });
  assert.equal(await badge.textContent(), "full");
  assert.equal(await save.isEnabled(), true);
  assert.match(await page.locator("#status").textContent(), /Logged in as 1501/);
  await page.context().close();
  net.close();
  c.close();
});
