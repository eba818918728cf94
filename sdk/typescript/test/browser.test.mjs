// The reference desktop (/desk/) in real Chromium (Debian's, driven by playwright-core) against a
// real `baton serve`, with the switch link and the dialer scripted from Node: a record pops when a
// call is answered, a consultee sees it read-only and gets it after a two-step transfer, every
// row of the consult-call failover table holds across a page that goes away and comes back, and
// a conference race shows exactly one winner. Screenshots of the key moments are written to
// target/browser/ for a person to look at.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { launchChromium, logIn, shots } from "./pages.mjs";
import { startServer, centre, sleep } from "./centre.mjs";

let server, browser;

before(async () => {
  server = await startServer();
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

const deskUrl = (s) => `http://127.0.0.1:${s.http}/desk/`;

/** A new tab with the desktop, logged in as `agent` on `dn`. */
async function agentPage(agent, dn, s = server) {
  const context = await browser.newContext({ viewport: { width: 900, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
  page.problems = problems;
  await page.goto(deskUrl(s));
  await logIn(page, agent, dn);
  return page;
}

const card = (page, record) => page.locator(`article[data-record="${record}"]`);
const badge = (page, record) => card(page, record).locator(".badge");
const call = (page, id) => page.locator(`#calls li[data-call="${id}"]`);

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

/** The page goes away (its WebSocket closes, as when the agent closes or reloads it)… */
async function away(page) {
  await page.goto("about:blank");
}
/** …and comes back in the same tab: it resumes the session from sessionStorage. */
async function back(page) {
  await page.goto(deskUrl(server));
  await page.locator("#desk").waitFor({ state: "visible" });
  await sleep(300); // the replay
}

function noProblems(...pages) {
  for (const p of pages) assert.deepEqual(p.problems, [], "the page logged no error");
}

test("a call is answered: the record pops on the agent's page with full access and its data", async () => {
  const c = await centre(server);
  const page = await agentPage("1001", "7001");
  await c.answered("C1", "R1", "7001", { name: "Dana Reyes", plan: "silver" });
  await card(page, "R1").waitFor();
  assert.equal(await badge(page, "R1").textContent(), "full");
  assert.match(await card(page, "R1").locator(".data").textContent(), /Dana Reyes/);
  assert.match(await call(page, "C1").textContent(), /established/);
  assert.equal(await card(page, "R1").getByRole("button", { name: "Save" }).isEnabled(), true);
  await shot(page, "01-record-pops");
  await card(page, "R1").getByLabel("Note").fill("wants gold");
  await card(page, "R1").getByRole("button", { name: "Save" }).click();
  await card(page, "R1").locator(".result", { hasText: "Saved." }).waitFor();
  noProblems(page);
  await page.context().close();
  c.close();
});

test("consultation: the consultee's page shows the record read-only; after the two-step transfer it is full, and revoked on the first page", async () => {
  const c = await centre(server);
  const a = await agentPage("1101", "7101");
  const b = await agentPage("1102", "7102");
  await c.answered("C11", "R11", "7101", { name: "Sam Lee" });
  await card(a, "R11").waitFor();
  await c.sw.event({ type: "Ringing", call: "C11c", dn: "7102", from_dn: "7101", consult_of: "C11" });
  await c.sw.event({ type: "Established", call: "C11c", dn: "7102" });
  await card(b, "R11").waitFor();
  assert.equal(await badge(b, "R11").textContent(), "read-only");
  assert.match(await card(b, "R11").locator(".data").textContent(), /Sam Lee/);
  for (const name of ["Save", "Processed", "Reject", "Do not call"]) {
    assert.equal(await card(b, "R11").getByRole("button", { name, exact: true }).isDisabled(), true, name);
  }
  assert.match(await call(b, "C11c").textContent(), /consultation about C11/);
  await shot(b, "02-consultee-read-only");

  await c.sw.event({ type: "Transferred", call: "C11", from_dn: "7101", to_dn: "7102", kind: "two_step", consult_call: "C11c" });
  await badge(a, "R11").filter({ hasText: "revoked" }).waitFor();
  await badge(b, "R11").filter({ hasText: "full" }).waitFor();
  assert.equal(await card(b, "R11").getByRole("button", { name: "Save" }).isEnabled(), true);
  assert.equal(await card(a, "R11").getByRole("button", { name: "Save" }).isDisabled(), true);
  await shot(a, "03-after-transfer-initiator-revoked");
  await shot(b, "04-after-transfer-recipient-full");
  noProblems(a, b);
  await a.context().close();
  await b.context().close();
  c.close();
});

/**
 * The failover table of the consult-call case: A (on `dnA`) has the customer with R; B (on
 * `dnB`) is consulted. `setup` brings the consultation to the row's starting point, the page
 * named by `leaves` goes away, `meanwhile` happens on the switch, the page comes back, and
 * `check` looks at what the pages show.
 */
const failover = [
  {
    row: "B accepted the consultation and comes back, call still up",
    answered: true,
    leaves: "b",
    meanwhile: async () => {},
    check: async ({ b, R, C2 }) => {
      assert.equal(await badge(b, R).textContent(), "read-only");
      assert.match(await call(b, C2).textContent(), /established/);
    },
  },
  {
    row: "B accepted the consultation; the transfer completes while B is away",
    answered: true,
    leaves: "b",
    meanwhile: async ({ c, C1, C2, dnA, dnB }) =>
      c.sw.event({ type: "Transferred", call: C1, from_dn: dnA, to_dn: dnB, kind: "two_step", consult_call: C2 }),
    check: async ({ b, R, C1, C2 }) => {
      assert.equal(await badge(b, R).textContent(), "full");
      assert.match(await call(b, C1).textContent(), /established/);
      assert.equal(await call(b, C2).count(), 0);
    },
  },
  {
    row: "B accepted and comes back after the consultation dropped",
    answered: true,
    leaves: "b",
    meanwhile: async ({ c, C2, dnA, dnB }) => {
      await c.sw.event({ type: "Released", call: C2, dn: dnB });
      await c.sw.event({ type: "Released", call: C2, dn: dnA });
    },
    check: async ({ b, R }) => {
      assert.equal(await badge(b, R).textContent(), "revoked");
      assert.equal(await b.locator("#calls li[data-call]").count(), 0, "no call in the replay");
    },
  },
  {
    row: "A goes away while the consultation still rings on B",
    answered: false,
    leaves: "a",
    meanwhile: async () => {},
    check: async ({ a, R, C1 }) => {
      assert.equal(await badge(a, R).textContent(), "full");
      assert.match(await call(a, C1).textContent(), /established/);
    },
  },
  {
    row: "A goes away; the consultation ends by RONA on B meanwhile",
    answered: false,
    leaves: "a",
    meanwhile: async ({ c, C2, dnB }) => c.sw.event({ type: "Released", call: C2, dn: dnB, cause: "rona" }),
    check: async ({ a, b, R, C2 }) => {
      assert.equal(await badge(a, R).textContent(), "full");
      assert.equal(await call(b, C2).count(), 0, "B shows nothing alerting");
      assert.equal(await card(b, R).count(), 0, "B never held R");
    },
  },
  {
    row: "A goes away; B answers and the transfer completes meanwhile",
    answered: false,
    leaves: "a",
    meanwhile: async ({ c, C1, C2, dnA, dnB }) => {
      await c.sw.event({ type: "Established", call: C2, dn: dnB });
      await c.sw.event({ type: "Transferred", call: C1, from_dn: dnA, to_dn: dnB, kind: "two_step", consult_call: C2 });
    },
    check: async ({ a, b, R }) => {
      assert.equal(await badge(a, R).textContent(), "revoked");
      assert.equal(await a.locator("#calls li[data-call]").count(), 0);
      await badge(b, R).filter({ hasText: "full" }).waitFor();
    },
  },
  {
    row: "B goes away while alerting, the call still ringing",
    answered: false,
    leaves: "b",
    meanwhile: async () => {},
    check: async ({ b, C2 }) => {
      assert.match(await call(b, C2).textContent(), /alerting/);
    },
  },
  {
    row: "B goes away while alerting; RONA ends it meanwhile",
    answered: false,
    leaves: "b",
    meanwhile: async ({ c, C2, dnB }) => c.sw.event({ type: "Released", call: C2, dn: dnB, cause: "rona" }),
    check: async ({ b }) => {
      assert.equal(await b.locator("#calls li[data-call]").count(), 0, "no alerting");
    },
  },
];

for (const [i, row] of failover.entries()) {
  test(`failover: ${row.row}`, async () => {
    const n = 20 + i;
    const [dnA, dnB, C1, C2, R] = [`7${n}1`, `7${n}2`, `C${n}`, `C${n}c`, `R${n}`];
    const c = await centre(server);
    const a = await agentPage(`1${n}1`, dnA);
    const b = await agentPage(`1${n}2`, dnB);
    await c.answered(C1, R, dnA);
    await card(a, R).waitFor();
    await c.sw.event({ type: "Ringing", call: C2, dn: dnB, from_dn: dnA, consult_of: C1 });
    await call(b, C2).waitFor();
    if (row.answered) {
      await c.sw.event({ type: "Established", call: C2, dn: dnB });
      await badge(b, R).filter({ hasText: "read-only" }).waitFor();
    }
    const leaving = row.leaves === "a" ? a : b;
    await away(leaving);
    await sleep(200); // the server sees the connection close
    const ctx = { c, a, b, R, C1, C2, dnA, dnB };
    await row.meanwhile(ctx);
    await back(leaving);
    await row.check(ctx);
    await shot(leaving, `05-failover-${i + 1}`);
    noProblems(a, b);
    await a.context().close();
    await b.context().close();
    c.close();
  });
}

test("failover: B is not back within resume_grace_ms: it was logged out, and comes back to a fresh session", async () => {
  const short = await startServer("resume_grace_ms = 1000\n");
  try {
    const c = await centre(short);
    const b = await agentPage("1302", "7302", short);
    await c.sw.take((f) => f.type === "AgentLogin" && f.dn === "7302");
    await c.answered("C30", "R30", "7302");
    await card(b, "R30").waitFor();
    await b.goto("about:blank");
    // Past the grace time the server logs B out and tells the switch.
    await c.sw.take((f) => f.type === "AgentLogout" && f.dn === "7302");
    await b.goto(deskUrl(short));
    await b.locator("#desk").waitFor({ state: "visible" });
    // The late resume is a fresh login (the switch hears of it again), and B takes R30 back by
    // rule 9: the call is still established on B's DN and nobody holds the record.
    await c.sw.take((f) => f.type === "AgentLogin" && f.dn === "7302");
    await badge(b, "R30").filter({ hasText: "full" }).waitFor();
    await shot(b, "05-failover-9-grace-expired");
    noProblems(b);
    c.close();
    await b.context().close();
  } finally {
    await short.stop();
  }
});

test("two pages race RecordProcessed in a conference: exactly one succeeds, the other is told who finished it", async () => {
  const c = await centre(server);
  const a = await agentPage("1401", "7401");
  const b = await agentPage("1402", "7402");
  await c.answered("C40", "R40", "7401");
  await c.sw.event({ type: "Ringing", call: "C40c", dn: "7402", from_dn: "7401", consult_of: "C40" });
  await c.sw.event({ type: "Established", call: "C40c", dn: "7402" });
  await c.sw.event({ type: "Conferenced", call: "C40", dn: "7402", consult_call: "C40c" });
  await badge(b, "R40").filter({ hasText: "full" }).waitFor();
  await badge(a, "R40").filter({ hasText: "full" }).waitFor();

  // Both agents press Processed at the same moment (the clicks are dispatched together).
  const press = (page) =>
    page.evaluate(() => document.querySelector('article[data-record="R40"] [data-final="processed"]').click());
  await Promise.all([press(a), press(b)]);
  // The winner is told it finished the record; both pages end up showing who did.
  const done = (page) => card(page, "R40").locator(".call").filter({ hasText: /^Final: processed by/ }).waitFor();
  await Promise.all([done(a), done(b)]);
  await sleep(300);
  const results = [await card(a, "R40").locator(".result").textContent(), await card(b, "R40").locator(".result").textContent()];
  const winners = results.filter((r) => r === "Finished: processed.");
  assert.equal(winners.length, 1, `exactly one winner: ${JSON.stringify(results)}`);
  const winner = results[0] === "Finished: processed." ? "1401" : "1402";
  const [loserPage, loserResult] = results[0] === "Finished: processed." ? [b, results[1]] : [a, results[0]];
  // The loser's request reached the server after the winner's: it is refused and says who won.
  // (Had the winner's push disabled its button first, its request would never have left.)
  assert.ok(
    loserResult === `Already finished by ${winner} (processed).` || loserResult === "",
    `the loser is told who won: ${JSON.stringify(loserResult)}`,
  );
  assert.equal(await card(loserPage, "R40").locator(".call").textContent(), `Final: processed by ${winner}.`);
  const outcome = await c.dialer.take((f) => f.type === "RecordOutcome" && f.record === "R40");
  assert.equal(outcome.by, winner);
  await shot(a, "06-race-page-a");
  await shot(b, "07-race-page-b");
  noProblems(a, b);
  await a.context().close();
  await b.context().close();
  c.close();
});
