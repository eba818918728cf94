// The reconnecting banner: the page stays open while its connection is cut, says so plainly, and
// comes back with its record when the network does.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { launchChromium, logIn, shots } from "./pages.mjs";
import { startServer, centre, proxy } from "./centre.mjs";

let server, browser;

before(async () => {
  server = await startServer();
  browser = await launchChromium();
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
  await logIn(page, "1501", "7501");
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
