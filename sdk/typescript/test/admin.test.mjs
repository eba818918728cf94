// The admin console (/admin/) in real Chromium (Debian's, driven by playwright-core) against a real
// `baton serve` with the read-only admin token, the switch link, the dialer and the desktops
// scripted from Node over TCP: its counters, agents and calls are exactly the centre's, a record's
// timeline is the audit log's in order, the live tail shows new entries and loses or repeats
// none across a dropped connection, and the token never reaches the page's HTML or URL.
// Screenshots go to target/browser/ for a person to look at.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launchChromium, adminPage, adminLogIn, screenshot } from "./pages.mjs";
import { startServer, centre, desktop, admin, proxy, sleep, ADMIN_READ_TOKEN } from "./centre.mjs";

let browser;
before(async () => {
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
});

/** Runs `body` against a server of its own, so that every count the console shows is exact. */
async function withCentre(body) {
  const server = await startServer();
  const c = await centre(server);
  const closing = [c];
  try {
    await body({ server, c, closing, base: `http://127.0.0.1:${server.http}` });
  } finally {
    for (const x of closing) x.close();
    await server.stop();
  }
}

/** Logs the console in and waits for its first figures. */
async function loggedIn(base) {
  const page = await adminPage(browser, base);
  await adminLogIn(page, ADMIN_READ_TOKEN);
  await page.locator("#console").waitFor({ state: "visible" });
  await page.locator('[data-counter="agents"]').filter({ hasText: /^\d+$/ }).waitFor();
  return page;
}

/** Polls `read` until it deep-equals `want` (or `ms` pass), then asserts it does. */
async function eventually(read, want, ms = 8000) {
  const deadline = Date.now() + ms;
  let got;
  for (;;) {
    got = await read();
    if (JSON.stringify(got) === JSON.stringify(want) || Date.now() > deadline) break;
    await sleep(100);
  }
  assert.deepEqual(got, want);
}

const texts = (locator) => locator.evaluateAll((els) => els.map((e) => e.textContent.trim()));

/** A row of the agents table: DN, state, logout pending, records held. */
const agentRow = (page, agent) => page.locator(`#agents tbody tr[data-agent="${agent}"]`);
async function agentCells(page, agent) {
  const row = agentRow(page, agent);
  return {
    dn: (await row.locator("td").nth(0).textContent()).trim(),
    state: (await row.locator("td").nth(1).textContent()).trim(),
    logoutPending: (await row.locator("td").nth(2).textContent()).trim(),
    records: await texts(row.locator(".holding")),
  };
}

/** The rows of an audit table as [what, agent, dn, call, access, cause, request], oldest first. */
async function timelineRows(page) {
  return page.locator("#timeline tbody tr").evaluateAll((rows) =>
    rows.map((r) => [...r.cells].map((c) => c.textContent.trim())),
  );
}

function noProblems(page) {
  assert.deepEqual(page.problems, [], "the page logged no error");
}

test("the console logs in with the admin_read token and shows the centre's counters", async () => {
  await withCentre(async ({ server, c, closing, base }) => {
    for (const [agent, dn] of [["1001", "7001"], ["1002", "7002"], ["1003", "7003"]]) {
      closing.push(await desktop(server, agent, dn));
    }
    await c.answered("C1", "R1", "7001");
    await c.answered("C2", "R2", "7002");
    const page = await loggedIn(base);
    const counters = () =>
      page.locator("[data-counter]").evaluateAll((dds) => Object.fromEntries(dds.map((d) => [d.dataset.counter, d.textContent])));
    // 3 logins, 2 attachments and 2 grants are in the log; the connections are the switch link,
    // the dialer, the 3 desktops and the console's two (counters and listings, live tail).
    await eventually(async () => {
      const { uptime, ...rest } = await counters();
      return rest;
    }, { agents: "3", dns: "3", calls: "2", records_live: "2", records_final: "0", connections: "7", audit_last_seq: "7" });
    assert.match((await counters()).uptime, /^\d+ s$/);
    assert.match(await page.locator("#status").textContent(), /Connected, read-only/);
    assert.equal(await page.locator("#banner").isHidden(), true);
    await agentRow(page, "1003").waitFor();
    await page.locator('#calls tbody tr[data-call="C2"]').waitFor();
    await screenshot(page, "admin-01-overview");
    noProblems(page);
    await page.context().close();
  });
});

test("the agents table shows each agent's DN, state and records, an away agent's grace counting down, and pages through", async () => {
  await withCentre(async ({ server, c, closing, base }) => {
    const a = await desktop(server, "1001", "7001");
    const b = await desktop(server, "1002", "7002");
    const away = await desktop(server, "1003", "7003");
    const leaving = await desktop(server, "1004", "7004");
    closing.push(a, b, leaving);
    await c.answered("C1", "R1", "7001");
    await c.consulted("C1", "C1c", "7001", "7002");
    await c.answered("C3", "R3", "7003");
    await c.answered("C4", "R4", "7004");
    // 1004 asks to log out while it holds R4: it leaves once R4 is final.
    assert.equal((await leaving.request({ type: "Logout" })).type, "LogoutPending");
    // 1003's desktop drops: the agent is away, its session kept for resume_grace_ms (20 s).
    away.close();
    for (let i = 1; i <= 8; i++) closing.push(await desktop(server, `20${i.toString().padStart(2, "0")}`, `80${i}`));

    const page = await loggedIn(base);
    await agentRow(page, "1003").locator("td.state").filter({ hasText: /^away/ }).waitFor();
    assert.deepEqual(await agentCells(page, "1001"), { dn: "7001", state: "logged in", logoutPending: "no", records: ["R1 full"] });
    assert.deepEqual(await agentCells(page, "1002"), { dn: "7002", state: "logged in", logoutPending: "no", records: ["R1 read-only"] });
    assert.deepEqual(await agentCells(page, "1004"), { dn: "7004", state: "logged in", logoutPending: "yes", records: ["R4 full"] });
    const awayRow = await agentCells(page, "1003");
    assert.deepEqual({ ...awayRow, state: undefined }, { dn: "7003", state: undefined, logoutPending: "no", records: ["R3 full"] });
    const graceLeft = (state) => Number(/^away: (\d+) s of grace left$/.exec(state)?.[1]);
    const first = graceLeft(awayRow.state);
    assert.ok(first > 10 && first <= 20, `grace left: ${awayRow.state}`);
    await sleep(2500);
    const later = graceLeft((await agentCells(page, "1003")).state);
    assert.ok(later < first && later >= first - 4, `the grace counts down: ${first} s, then ${later} s`);
    // Sorted by agent id.
    assert.deepEqual((await texts(page.locator("#agents tbody th"))).slice(0, 4), ["1001", "1002", "1003", "1004"]);
    await screenshot(page, "admin-02-agents");

    // Twelve agents, ten a page: the second page holds the last two.
    await page.locator('.pager[data-list="agents"]').getByLabel("Rows per page").selectOption("10");
    await eventually(() => texts(page.locator("#agents tbody th")), ["1001", "1002", "1003", "1004", "2001", "2002", "2003", "2004", "2005", "2006"]);
    await page.locator('.pager[data-list="agents"]').getByRole("button", { name: "Next page" }).click();
    await eventually(() => texts(page.locator("#agents tbody th")), ["2007", "2008"]);
    assert.equal(await page.locator('.pager[data-list="agents"]').getByRole("button", { name: "Next page" }).isDisabled(), true);
    await page.locator('.pager[data-list="agents"]').getByRole("button", { name: "First page" }).click();
    await eventually(async () => (await texts(page.locator("#agents tbody th"))).length, 10);
    noProblems(page);
    await page.context().close();
  });
});

test("the calls table shows a consultation call with its parties, next to the customer call", async () => {
  await withCentre(async ({ server, c, closing, base }) => {
    closing.push(await desktop(server, "1001", "7001"), await desktop(server, "1002", "7002"), await desktop(server, "1003", "7003"));
    await c.answered("C1", "R1", "7001");
    await c.consulted("C1", "C1c", "7001", "7002");
    await c.attach("C5", "R5");
    await c.sw.event({ type: "Ringing", call: "C5", dn: "7003", ani: "+15550105" });

    const page = await loggedIn(base);
    const call = (id) => page.locator(`#calls tbody tr[data-call="${id}"]`);
    await call("C1c").waitFor();
    const cells = async (id) => {
      const row = call(id);
      return {
        parties: await texts(row.locator("ul.parties li")),
        record: (await row.locator("td").nth(1).textContent()).trim(),
        consultOf: (await row.locator("td").nth(2).textContent()).trim(),
      };
    };
    assert.deepEqual(await texts(page.locator("#calls tbody th")), ["C1", "C1c", "C5"]);
    assert.deepEqual(await cells("C1"), { parties: ["7001 established (agent 1001)"], record: "R1", consultOf: "–" });
    assert.deepEqual(await cells("C1c"), {
      parties: ["7001 dialing (agent 1001)", "7002 established (agent 1002)"],
      record: "–",
      consultOf: "C1",
    });
    assert.deepEqual(await cells("C5"), { parties: ["7003 alerting (agent 1003)"], record: "R5", consultOf: "–" });
    await page.locator("#calls").scrollIntoViewIfNeeded();
    await screenshot(page, "admin-03-calls");
    noProblems(page);
    await page.context().close();
  });
});

/** Looks `record` up in the console and waits for its timeline. */
async function lookUp(page, record) {
  await page.locator("#lookup").getByLabel("Record handle").fill(record);
  await page.locator("#lookup").getByRole("button", { name: "Look up" }).click();
  await page.locator("#record-message").filter({ hasText: new RegExp(`^(Record ${record}|The server knows no record)`) }).waitFor();
}

/** The timeline's rows without their time and seq, after checking both: UTC times, seqs rising. */
async function timeline(page) {
  const rows = await timelineRows(page);
  const seqs = rows.map((r) => Number(r[1]));
  assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), "oldest first");
  assert.equal(new Set(seqs).size, seqs.length, "no entry twice");
  for (const r of rows) assert.match(r[0], /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$/);
  return rows.map((r) => r.slice(2));
}

test("the record timeline shows a two-step transfer step by step, in order", async () => {
  await withCentre(async ({ server, c, closing, base }) => {
    const a = await desktop(server, "1001", "7001");
    const b = await desktop(server, "1002", "7002");
    closing.push(a, b);
    await c.answered("C1", "R1", "7001");
    await c.consulted("C1", "C1c", "7001", "7002");
    await c.sw.event({ type: "Transferred", call: "C1", from_dn: "7001", to_dn: "7002", kind: "two_step", consult_call: "C1c" });
    await b.take((f) => f.type === "AccessChanged" && f.access === "full");
    assert.equal((await b.request({ type: "RecordProcessed", record: "R1", call_result: "sale" })).type, "RecordProcessedAck");

    const page = await loggedIn(base);
    await lookUp(page, "R1");
    // What, agent, DN, call, access, cause or error, request.
    assert.deepEqual(await timeline(page), [
      ["attached by the dialer", "", "", "C1", "", "campaign spring, chain_n 0", ""],
      ["granted", "1001", "7001", "C1", "full", "established", ""],
      ["granted", "1002", "7002", "C1", "read-only", "consultation", ""],
      ["granted", "1002", "7002", "C1", "full (was read-only)", "transfer", ""],
      ["revoked", "1001", "7001", "C1", "revoked (was full)", "transfer", ""],
      ["request accepted", "1002", "7002", "C1", "full", "", "RecordProcessed"],
      ["finalized", "1002", "", "C1", "", "processed", ""],
      ["revoked", "1002", "7002", "C1", "revoked (was full)", "processed", ""],
    ]);
    const report = await page.locator("#record-report").evaluate((dl) =>
      Object.fromEntries([...dl.querySelectorAll("dt")].map((dt) => [dt.textContent, dt.nextElementSibling.textContent])),
    );
    assert.equal(report.State, "final");
    assert.equal(report.Call, "C1");
    assert.match(report.Final, /^processed by 1002 at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC$/);
    assert.equal(report["Call result"], "sale");
    await page.locator("#lookup").scrollIntoViewIfNeeded();
    await screenshot(page, "admin-04-timeline-transfer");

    // A record the server never saw is said so in plain words.
    await lookUp(page, "R404");
    assert.match(await page.locator("#record-message").textContent(), /^The server knows no record R404: it was never attached/);
    assert.equal(await page.locator("#timeline").isHidden(), true);
    noProblems(page);
    await page.context().close();
  });
});

test("the record timeline shows a conference race: both full, one processed accepted, the other denied already_final", async () => {
  await withCentre(async ({ server, c, closing, base }) => {
    const a = await desktop(server, "1001", "7001");
    const b = await desktop(server, "1002", "7002");
    closing.push(a, b);
    await c.answered("C1", "R1", "7001");
    await c.consulted("C1", "C1c", "7001", "7002");
    await c.sw.event({ type: "Conferenced", call: "C1", dn: "7002", consult_call: "C1c" });
    await b.take((f) => f.type === "AccessChanged" && f.access === "full" && f.cause === "conference");
    // Both press Processed at once: both requests are on the wire before either answer is read.
    a.send({ type: "RecordProcessed", ref: 100, record: "R1" });
    b.send({ type: "RecordProcessed", ref: 100, record: "R1" });
    const [ra, rb] = await Promise.all([a.take((f) => f.ref === 100), b.take((f) => f.ref === 100)]);
    const [winner, loser] = ra.type === "RecordProcessedAck" ? ["1001", "1002"] : ["1002", "1001"];
    assert.equal((winner === "1001" ? rb : ra).code, "already_final");
    const dn = { 1001: "7001", 1002: "7002" };

    const page = await loggedIn(base);
    await lookUp(page, "R1");
    assert.deepEqual(await timeline(page), [
      ["attached by the dialer", "", "", "C1", "", "campaign spring, chain_n 0", ""],
      ["granted", "1001", "7001", "C1", "full", "established", ""],
      ["granted", "1002", "7002", "C1", "read-only", "consultation", ""],
      ["granted", "1002", "7002", "C1", "full (was read-only)", "conference", ""],
      ["request accepted", winner, dn[winner], "C1", "full", "", "RecordProcessed"],
      ["finalized", winner, "", "C1", "", "processed", ""],
      ["revoked", "1001", "7001", "C1", "revoked (was full)", "processed", ""],
      ["revoked", "1002", "7002", "C1", "revoked (was full)", "processed", ""],
      [
        "request denied",
        loser,
        dn[loser],
        "C1",
        "revoked",
        `already_final: record R1 is already final (processed by ${winner})`,
        "RecordProcessed",
      ],
    ]);
    await page.locator("#lookup").scrollIntoViewIfNeeded();
    await screenshot(page, "admin-05-timeline-race");
    noProblems(page);
    await page.context().close();
  });
});

test("the live tail shows a new entry as it is written, and loses or repeats none across a dropped connection", async () => {
  await withCentre(async ({ server, c, closing, base }) => {
    closing.push(await desktop(server, "1001", "7001"));
    await c.answered("C1", "R1", "7001");
    // The page and its WebSockets go through a proxy that plays the network.
    const net = await proxy(server.http);
    closing.push(net);
    const page = await loggedIn(net.url.replace("ws://", "http://").replace("/ws", ""));
    const tailRows = page.locator("#tail tbody tr[data-seq]");
    const shownSeqs = async () => (await tailRows.evaluateAll((rows) => rows.map((r) => Number(r.dataset.seq))));
    await eventually(shownSeqs, [3, 2, 1]);
    assert.match(await page.locator("#tail-status").textContent(), /^Following from seq 1; last entry received: seq 3\./);

    // A new entry: the page shows it as soon as it is on disk.
    const written = Date.now();
    closing.push(await desktop(server, "1002", "7002"));
    const row = page.locator('#tail tbody tr[data-seq="4"]');
    await row.waitFor({ timeout: 5000 });
    console.log(`live tail: the new entry was on the page ${Date.now() - written} ms after its Login was answered`);
    assert.deepEqual(
      await row.evaluate((r) => [...r.cells].slice(2, 5).map((c) => c.textContent)),
      ["logged in", "1002", "7002"],
    );
    await screenshot(page, "admin-06-live-tail");

    // The network drops: the console says so, and entries are written while it is away.
    net.cut(true);
    await page.getByRole("alert").filter({ hasText: "reconnecting" }).waitFor();
    await c.answered("C2", "R2", "7002");
    closing.push(await desktop(server, "1003", "7003"));
    const adminPeer = await admin(server);
    closing.push(adminPeer);
    const last = (await adminPeer.request({ type: "Status" })).audit_last_seq;
    assert.equal(last, 7, "three entries were written while the console was away");
    await screenshot(page, "admin-07-reconnecting");

    net.heal();
    await page.locator("#banner").waitFor({ state: "hidden", timeout: 15000 });
    await page.locator(`#tail tbody tr[data-seq="${last}"]`).waitFor({ timeout: 5000 });
    await sleep(500); // anything repeated would come now
    assert.deepEqual(await shownSeqs(), [7, 6, 5, 4, 3, 2, 1], "every seq once, newest first, no gap");
    assert.match(await page.locator("#tail-status").textContent(), /^Following from seq 5; last entry received: seq 7\./);
    await screenshot(page, "admin-08-after-reconnect");
    noProblems(page);
    await page.context().close();
  });
});

test("the tail's filters restart it: by agent, and by kind on the page", async () => {
  await withCentre(async ({ server, c, closing, base }) => {
    closing.push(await desktop(server, "1001", "7001"), await desktop(server, "1002", "7002"));
    await c.answered("C1", "R1", "7001");
    await c.answered("C2", "R2", "7002");
    const page = await loggedIn(base);
    const filters = page.locator("#tail-filters");
    await filters.getByLabel("Agent").fill("1002");
    await filters.getByLabel("Kind").selectOption("granted");
    await filters.getByRole("button", { name: "Apply filters" }).click();
    const rows = page.locator("#tail tbody tr[data-seq]");
    await eventually(() => rows.evaluateAll((rs) => rs.map((r) => [r.dataset.kind, r.cells[3].textContent, r.cells[6].textContent])), [
      ["granted", "1002", "R2"],
    ]);
    assert.match(await page.locator("#tail-status").textContent(), /filtered: agent 1002, “granted” only/);
    // Entries written later go through the same filters.
    closing.push(await desktop(server, "1003", "7003"));
    await c.answered("C3", "R3", "7003");
    await c.consulted("C2", "C2c", "7002", "7003"); // 1003 is granted R2: not 1002's
    await c.consulted("C1", "C1c", "7001", "7002"); // 1002 is granted R1 read-only
    await eventually(() => rows.evaluateAll((rs) => rs.map((r) => [r.dataset.kind, r.cells[3].textContent, r.cells[6].textContent])), [
      ["granted", "1002", "R1"],
      ["granted", "1002", "R2"],
    ]);
    noProblems(page);
    await page.context().close();
  });
});

test("a wrong token is refused in plain words; the token is never in the page's HTML or URL; a reload reconnects and Log out forgets it", async () => {
  await withCentre(async ({ base }) => {
    const page = await adminPage(browser, base);
    await adminLogIn(page, "not-the-token");
    const error = page.locator("#login-error");
    await error.filter({ hasText: /./ }).waitFor();
    assert.equal(await error.textContent(), "The server refused this token (auth_failed). Use the admin_read token from the server's [tokens] configuration.");
    assert.equal(await page.locator("#console").isHidden(), true);
    assert.equal(await page.evaluate(() => sessionStorage.length), 0, "a refused token is not kept");
    assert.ok(!(await page.content()).includes("not-the-token"));
    assert.ok(!page.url().includes("not-the-token"));
    await screenshot(page, "admin-09-refused");

    await adminLogIn(page, ADMIN_READ_TOKEN);
    await page.locator("#console").waitFor({ state: "visible" });
    const clean = async () => {
      assert.ok(!(await page.content()).includes(ADMIN_READ_TOKEN), "the token is not in the page's HTML");
      assert.ok(!page.url().includes(ADMIN_READ_TOKEN), "nor in its URL");
    };
    await clean();
    assert.equal(page.url(), `${base}/admin/`);
    // The tab keeps it: a reload reconnects without the form.
    await page.reload();
    await page.locator("#console").waitFor({ state: "visible" });
    await page.locator('[data-counter="connections"]').filter({ hasText: /^\d+$/ }).waitFor();
    assert.equal(await page.locator("#login").isHidden(), true);
    await clean();
    await page.getByRole("button", { name: "Log out" }).click();
    await page.locator("#login").waitFor({ state: "visible" });
    assert.equal(await page.evaluate(() => sessionStorage.length), 0, "Log out forgets the token");
    await page.reload();
    await page.locator("#login").waitFor({ state: "visible" });
    assert.equal(await page.locator("#console").isHidden(), true);
    await clean();
    noProblems(page);
    await page.context().close();
  });
});

test("the console is served at /admin/ with a policy that keeps it to its own server", async () => {
  await withCentre(async ({ base }) => {
    const redirect = await fetch(`${base}/admin`, { redirect: "manual" });
    assert.equal(redirect.status, 308);
    assert.equal(redirect.headers.get("location"), "/admin/");
    const page = await fetch(`${base}/admin/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type"), /^text\/html/);
    const policy = page.headers.get("content-security-policy");
    for (const rule of ["default-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "form-action 'none'"]) {
      assert.ok(policy.includes(rule), `${rule} in ${policy}`);
    }
    assert.ok(!(await page.text()).includes(ADMIN_READ_TOKEN));
    for (const [file, type] of [["admin.js", /^text\/javascript/], ["admin.css", /^text\/css/]]) {
      const asset = await fetch(`${base}/admin/${file}`);
      assert.equal(asset.status, 200, file);
      assert.match(asset.headers.get("content-type"), type);
    }
  });
});
