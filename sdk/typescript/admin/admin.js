// The Baton admin console: a read-only view of a running centre, as an admin client of the
// WebSocket endpoint (/ws). Every 2 s it asks for Status and for the agents and calls; it looks a
// record up with its complete history; and it follows the audit log live, on a connection of its
// own, resuming after a drop from the entry after the last one it received.
//
// The admin token is typed into the login form and kept only in this tab's sessionStorage, so that
// a reload reconnects and closing the tab forgets it. "Log out" forgets it at once.

const $ = (id) => document.getElementById(id);
const WS_URL = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const TOKEN_KEY = "baton.admin.token";
const REFRESH_MS = 2000;
const TAIL_ROWS = 500;
const MAX_BACKOFF_MS = 10000;

const AUDIT_KINDS = {
  granted: "granted",
  downgraded: "downgraded",
  revoked: "revoked",
  accepted: "request accepted",
  denied: "request denied",
  finalized: "finalized",
  attached: "attached by the dialer",
  orphaned: "left with no holder",
  login: "logged in",
  logout: "logged out",
  login_failed: "login refused",
};
const ACCESS_TEXT = { full: "full", read_only: "read-only", revoked: "revoked" };
const RECORD_STATES = {
  held: "held: an agent has it now",
  waiting: "waiting: attached, nobody has had it yet",
  orphaned: "orphaned: nobody holds it; it goes back to the dialer as stale if nobody takes it",
  final: "final",
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// The connection

/** The server refused a request or the Hello: `code` is its error code. */
class Refusal extends Error {
  constructor(frame) {
    super(frame.message ?? frame.code);
    this.code = frame.code;
  }
}

/** The connection ended (or could not be opened) before the answer came. */
class Lost extends Error {}

/**
 * One admin session on one WebSocket: Hello with the token, requests matched by their ref, a Ping
 * every heartbeat, and a watchdog that gives the connection up after three silent heartbeats.
 */
class Session {
  constructor(token) {
    this.token = token;
    this.nextRef = 2;
    this.handlers = new Map(); // ref -> function(frame) returning true once the answer is complete
    this.ended = false;
    this.onEnd = () => {};
  }

  /** Connects and says Hello: resolves on Welcome, rejects with a Refusal or Lost. */
  open() {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(WS_URL);
      } catch (e) {
        reject(new Lost(e.message));
        return;
      }
      this.ws = ws;
      let welcomed = false;
      ws.onopen = () => {
        ws.send(JSON.stringify({ type: "Hello", ref: 1, protocol: 1, role: "admin", token: this.token }));
      };
      ws.onmessage = (message) => {
        let frame;
        try {
          frame = JSON.parse(message.data);
        } catch {
          return;
        }
        this.heard = Date.now();
        if (welcomed) {
          this.dispatch(frame);
        } else if (frame.type === "Welcome") {
          welcomed = true;
          this.beat(frame.heartbeat_ms || 5000);
          resolve(frame);
        } else if (frame.type === "Error") {
          reject(new Refusal(frame));
        }
      };
      ws.onclose = () => {
        if (!welcomed) reject(new Lost("the connection closed"));
        this.end();
      };
    });
  }

  /** Pings every heartbeat; a connection silent for three heartbeats is treated as lost. */
  beat(heartbeatMs) {
    this.timer = setInterval(() => {
      if (Date.now() - this.heard > 3 * heartbeatMs) {
        this.end();
        return;
      }
      this.send({ type: "Ping", ref: this.nextRef++ });
    }, heartbeatMs);
  }

  dispatch(frame) {
    const handler = this.handlers.get(frame.ref);
    if (handler && handler(frame)) this.handlers.delete(frame.ref);
  }

  send(frame) {
    if (!this.ended && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  /** Sends a request; resolves with its answer, rejects with a Refusal or Lost. */
  request(frame) {
    return this.stream(frame, () => {}, (f) => f.type !== "Audit" && f.type !== "AuditTrimmed");
  }

  /**
   * Sends a request answered by several frames: each goes to `onFrame` until `last(frame)`; the
   * promise then resolves with that frame (or rejects when it is an Error).
   */
  stream(frame, onFrame, last = (f) => f.type === "AuditEnd") {
    if (this.ended) return Promise.reject(new Lost("not connected"));
    const ref = this.nextRef++;
    return new Promise((resolve, reject) => {
      this.handlers.set(ref, (f) => {
        if (f.type === "Error") {
          reject(new Refusal(f));
          return true;
        }
        if (last(f)) {
          resolve(f);
          return true;
        }
        onFrame(f);
        return false;
      });
      this.handlers.get(ref).lost = reject;
      this.send({ ...frame, ref });
    });
  }

  /** Ends the session: every request still waiting fails with Lost. */
  end() {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.timer);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close();
    for (const handler of this.handlers.values()) handler.lost(new Lost("the connection was lost"));
    this.handlers.clear();
    this.onEnd();
  }
}

/**
 * A connection that comes back: opens a Session, calls `up(session)` each time one is open and
 * `down(attempt)` while none is, and tries again with growing, jittered delays. A refused Hello
 * (a token the server no longer takes) stops it and goes to `refused(error)`.
 */
class Link {
  constructor(token, { up, down, refused, retryFirst = false }) {
    Object.assign(this, { token, up, down, refused, retryFirst });
    this.session = null;
    this.stopped = false;
    this.first = null;
  }

  /**
   * Resolves once the first session is open. Rejects with the server's Refusal, or with Lost when
   * the first attempt finds no server (unless `retryFirst`: then it keeps trying, as after a drop).
   */
  start() {
    return new Promise((resolve, reject) => {
      this.first = { resolve, reject };
      this.run();
    });
  }

  async run() {
    let attempt = 0;
    while (!this.stopped) {
      const session = new Session(this.token);
      try {
        await session.open();
      } catch (e) {
        session.end();
        if (this.stopped) return;
        // A full server, or a standby of a cluster, may take the connection a moment later.
        const refused = e instanceof Refusal && e.code !== "overloaded" && e.code !== "not_active";
        if (refused || (this.first && !this.retryFirst)) {
          const first = this.first;
          this.first = null;
          this.stop();
          if (first) first.reject(e);
          else this.refused(e);
          return;
        }
        attempt += 1;
        this.down(attempt);
        await sleep(Math.min(MAX_BACKOFF_MS, 300 * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2));
        continue;
      }
      if (this.stopped) {
        session.end();
        return;
      }
      attempt = 0;
      this.first?.resolve();
      this.first = null;
      const ended = new Promise((r) => (session.onEnd = r));
      this.session = session;
      this.up(session);
      await ended;
      this.session = null;
      if (this.stopped) return;
      attempt = 1;
      this.down(attempt);
      await sleep(150 + Math.random() * 150);
    }
  }

  stop() {
    this.stopped = true;
    this.session?.end();
    if (this.first) {
      const stopped = new Lost("stopped");
      stopped.stopped = true;
      this.first.reject(stopped);
      this.first = null;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Logging in and out

let main = null; // the Link for counters, listings and look-ups
let tailLink = null; // the Link of the live audit tail
const links = new Set(); // the Links of this login

/**
 * Opens the console's connection with `token`. A reloaded page (`fromReload`) keeps trying while
 * the server cannot be reached, with the banner up; a refused token always ends it.
 */
async function logIn(token, { fromReload = false } = {}) {
  const link = new Link(token, {
    up: (session) => mainUp(session),
    down: (attempt) => linkDown(link, attempt),
    refused: (e) => refusedLater(e),
    retryFirst: fromReload,
  });
  main = link;
  links.add(link);
  await link.start();
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = false;
  startTail(token);
}

function forget() {
  sessionStorage.removeItem(TOKEN_KEY);
  for (const link of links) link.stop();
  links.clear();
  downSince.clear();
  main = tailLink = null;
  clearInterval(refreshTimer);
  refreshTimer = null;
}

function showLogin(message) {
  forget();
  $("console").hidden = true;
  $("logout").hidden = true;
  $("banner").hidden = true;
  $("login").hidden = false;
  $("status").textContent = "Not logged in";
  $("login-error").textContent = message;
  for (const table of [$("agents"), $("calls"), $("timeline"), $("tail")]) table.tBodies[0].replaceChildren();
  $("record-report").hidden = $("timeline").hidden = true;
  $("record-message").textContent = "";
  $("tail-status").textContent = "";
  lastRefresh = null;
  for (const page of Object.values(pages)) Object.assign(page, { cursors: [undefined], index: 0, more: false, last: undefined });
}

/** The server's refusal of a Hello, in plain words. */
function refusalText(e) {
  if (e instanceof Refusal) {
    switch (e.code) {
      case "auth_failed":
        return "The server refused this token (auth_failed). Use the admin_read token from the server's [tokens] configuration.";
      case "overloaded":
        return "The server is serving as many connections as it may (overloaded): try again in a moment.";
      case "protocol_mismatch":
        return "This server speaks another version of the protocol than this console (protocol_mismatch).";
      case "not_active":
        return "This server is a standby (not_active): open the console of the active server.";
      default:
        return `The server refused the connection (${e.code}): ${e.message}`;
    }
  }
  return "Cannot reach the server: check that it is running, then try again.";
}

/** The server stopped taking the token (its configuration changed): back to the login form. */
function refusedLater(e) {
  showLogin(`${refusalText(e)} (It no longer accepts the token this page was using.)`);
}

function loginFailed(e) {
  if (!e.stopped) showLogin(refusalText(e));
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const token = form.elements.token.value.trim();
  form.reset();
  if (!token) return;
  forget();
  $("login-error").textContent = "";
  $("status").textContent = "Connecting…";
  try {
    await logIn(token);
  } catch (e) {
    loginFailed(e);
  }
});

$("logout").addEventListener("click", () => showLogin(""));

// ---------------------------------------------------------------------------------------------
// Connection state: the banner and the status line

const downSince = new Map(); // Link -> attempt number, while it is not connected

function linkDown(link, attempt) {
  downSince.set(link, attempt);
  if (link === main) {
    clearInterval(refreshTimer);
    refreshTimer = null;
  }
  showConnection();
}

function linkUp(link) {
  downSince.delete(link);
  showConnection();
}

function showConnection() {
  const down = [...downSince.keys()].some((l) => links.has(l));
  const banner = $("banner");
  if (down) {
    const asOf = lastRefresh ? ` What is shown is as of ${clock(lastRefresh)} UTC.` : "";
    banner.textContent = `Connection to the server lost: reconnecting…${asOf}`;
  }
  banner.hidden = !down;
  $("status").textContent = down ? "Reconnecting…" : "Connected, read-only";
}

// ---------------------------------------------------------------------------------------------
// Counters, agents and calls, every 2 s

let refreshTimer = null;
let refreshing = false;
let lastRefresh = null;

function mainUp(session) {
  linkUp(main);
  refresh(session);
  clearInterval(refreshTimer);
  refreshTimer = setInterval(() => refresh(session), REFRESH_MS);
}

const pages = {
  agents: { cursors: [undefined], index: 0, size: 100, more: false, last: undefined },
  calls: { cursors: [undefined], index: 0, size: 100, more: false, last: undefined },
};

function pageRequest(type, page) {
  const frame = { type, limit: page.size };
  const after = page.cursors[page.index];
  if (after !== undefined) frame.after = after;
  return frame;
}

async function refresh(session) {
  if (refreshing || session.ended) return;
  refreshing = true;
  try {
    const [status, agents, calls] = await Promise.allSettled([
      session.request({ type: "Status" }),
      session.request(pageRequest("Agents", pages.agents)),
      session.request(pageRequest("Calls", pages.calls)),
    ]);
    if (session.ended) return;
    showListing("agents", agents, agentRow, "agent", 5, "No agent is logged in.");
    showListing("calls", calls, callRow, "call", 4, "No call.");
    if (status.status === "fulfilled") {
      showStatus(status.value);
      lastRefresh = new Date();
      $("counters-time").textContent = `as of ${clock(lastRefresh)} UTC, every 2 s`;
    }
  } finally {
    refreshing = false;
  }
}

function showStatus(s) {
  const values = { ...s, uptime: duration(s.uptime_s) };
  for (const dd of document.querySelectorAll("[data-counter]")) {
    const v = values[dd.dataset.counter];
    dd.textContent = typeof v === "number" ? v.toLocaleString("en-US") : v ?? "–";
  }
}

function showListing(name, settled, row, key, columns, emptyText) {
  const table = $(name);
  const page = pages[name];
  const body = table.tBodies[0];
  if (settled.status === "rejected") {
    const e = settled.reason;
    if (e instanceof Lost) return; // the banner says so; the last listing stays
    const text =
      e.code === "unknown_type"
        ? "This server does not list them (it is an older version)."
        : `The server refused the listing (${e.code}): ${e.message}`;
    body.replaceChildren(messageRow(columns, text, "error"));
    return;
  }
  const report = settled.value;
  const items = report[name];
  page.more = report.more;
  page.last = items.length ? items[items.length - 1][key] : undefined;
  body.replaceChildren(...(items.length ? items.map(row) : [messageRow(columns, page.index ? "Nothing on this page any more." : emptyText, "empty")]));
  const pager = document.querySelector(`.pager[data-list="${name}"]`);
  pager.querySelector(".where").textContent = `Page ${page.index + 1}${items.length ? `: ${items[0][key]} to ${page.last}` : ""}`;
  pager.querySelector('[data-page="next"]').disabled = !page.more || page.last === undefined;
  pager.querySelector('[data-page="previous"]').disabled = page.index === 0;
  pager.querySelector('[data-page="first"]').disabled = page.index === 0;
  // One page only: no page buttons.
  for (const button of pager.querySelectorAll("button")) button.hidden = page.index === 0 && !page.more;
}

for (const pager of document.querySelectorAll(".pager")) {
  const page = pages[pager.dataset.list];
  pager.addEventListener("click", (event) => {
    const which = event.target.closest("button")?.dataset.page;
    if (!which) return;
    if (which === "next" && page.more && page.last !== undefined) {
      page.cursors = page.cursors.slice(0, page.index + 1);
      page.cursors.push(page.last);
      page.index += 1;
    } else if (which === "previous" && page.index > 0) {
      page.index -= 1;
    } else if (which === "first") {
      page.index = 0;
    }
    if (main?.session) refresh(main.session);
  });
  pager.querySelector("select").addEventListener("change", (event) => {
    page.size = Number(event.target.value);
    page.cursors = [undefined];
    page.index = 0;
    if (main?.session) refresh(main.session);
  });
}

function agentRow(a) {
  const tr = document.createElement("tr");
  tr.dataset.agent = a.agent;
  const state = cell("");
  state.className = "state";
  if (a.state === "away") {
    const deadline = Date.now() + (a.grace_left_ms ?? 0);
    state.dataset.deadline = String(deadline);
    state.textContent = awayText(deadline);
    tr.classList.add("away");
  } else {
    state.textContent = "logged in";
  }
  const records = cell("");
  records.className = "held";
  if (a.records.length) {
    records.append(...a.records.map((r) => holding(r.record, r.access)));
  } else {
    records.textContent = "none";
    records.classList.add("empty");
  }
  tr.append(cell(a.agent, "th"), cell(a.dn), state, cell(a.logout_pending ? "yes" : "no"), records);
  return tr;
}

function awayText(deadline) {
  const left = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
  return `away: ${left} s of grace left`;
}

// The grace of away agents counts down between two refreshes.
setInterval(() => {
  for (const td of document.querySelectorAll("#agents td[data-deadline]")) {
    td.textContent = awayText(Number(td.dataset.deadline));
  }
}, 1000);

function callRow(c) {
  const tr = document.createElement("tr");
  tr.dataset.call = c.call;
  const parties = cell("");
  const list = document.createElement("ul");
  list.className = "parties";
  list.append(
    ...c.parties.map((p) => {
      const li = document.createElement("li");
      li.dataset.dn = p.dn;
      li.textContent = `${p.dn} ${p.state}${p.agent ? ` (agent ${p.agent})` : ""}`;
      return li;
    }),
  );
  parties.append(list);
  tr.append(cell(c.call, "th"), parties, cell(c.record ?? "–"), cell(c.consult_of ?? "–"));
  return tr;
}

// ---------------------------------------------------------------------------------------------
// One record: its report and its complete history

let lookingUp = false;

$("lookup").addEventListener("submit", async (event) => {
  event.preventDefault();
  const record = event.target.elements.record.value.trim();
  if (!record || lookingUp) return;
  const session = main?.session;
  const message = $("record-message");
  message.className = "";
  if (!session) {
    message.textContent = "Not connected: look it up again once the connection is back.";
    return;
  }
  lookingUp = true;
  const button = event.target.querySelector("button");
  button.disabled = true;
  message.textContent = `Looking up ${record}…`;
  try {
    const [info, history] = await Promise.allSettled([
      session.request({ type: "RecordInfo", record }),
      recordHistory(session, record),
    ]);
    showRecord(record, info, history);
  } finally {
    lookingUp = false;
    button.disabled = false;
  }
});

/**
 * Everything the audit log holds about `record`, up to now: the log up to Status's
 * audit_last_seq, asked again for the entries of reads and refusals still on their way to the
 * disk (they follow their answers by up to 20 ms).
 */
async function recordHistory(session, record) {
  const { audit_last_seq: until } = await session.request({ type: "Status" });
  const entries = [];
  let from = 1;
  for (let round = 0; ; round++) {
    const end = await session.stream({ type: "AuditTail", from_seq: from, follow: false, record }, (f) => entries.push(f));
    if (end.last_seq >= until || round >= 50) break;
    from = end.last_seq + 1;
    await sleep(20);
  }
  return entries;
}

function showRecord(record, info, history) {
  const message = $("record-message");
  const report = $("record-report");
  const timeline = $("timeline");
  if (info.status === "fulfilled") {
    const r = info.value;
    message.textContent = `Record ${r.record}`;
    message.className = "title";
    const rows = [
      ["State", RECORD_STATES[r.state] ?? r.state],
      ["Call", r.call ?? "–"],
      ["Version", String(r.version ?? 0)],
      ["Holders", r.holders.length ? r.holders.map((h) => holding(h.agent, h.access)) : "nobody yet"],
    ];
    if (r.final) {
      rows.push(["Final", `${words(r.final.outcome)}${r.final.by ? ` by ${r.final.by}` : ""} at ${utc(r.final.at)} UTC`]);
    }
    const ctx = r.context ?? { fields: {} };
    if (ctx.call_result) rows.push(["Call result", ctx.call_result]);
    for (const [k, v] of Object.entries(ctx.fields ?? {})) rows.push([k, typeof v === "string" ? v : JSON.stringify(v)]);
    report.replaceChildren(
      ...rows.flatMap(([k, v]) => {
        const dd = document.createElement("dd");
        if (Array.isArray(v)) dd.append(...v);
        else dd.textContent = v;
        return [Object.assign(document.createElement("dt"), { textContent: k }), dd];
      }),
    );
    report.hidden = false;
  } else {
    const e = info.reason;
    message.className = "error";
    message.textContent =
      e.code === "no_such_record"
        ? `The server knows no record ${record}: it was never attached, or it was deleted after it became final.`
        : e instanceof Lost
          ? "The connection was lost before the answer came: look it up again once it is back."
          : `The server refused to look it up (${e.code}): ${e.message}`;
    report.hidden = true;
  }
  const body = timeline.tBodies[0];
  if (history.status === "fulfilled" && history.value.length) {
    body.replaceChildren(...history.value.map((f) => (f.type === "AuditTrimmed" ? trimmedRow(f, 9) : auditRow(f, false))));
    timeline.hidden = false;
  } else {
    body.replaceChildren();
    timeline.hidden = true;
    if (history.status === "fulfilled" && info.status === "rejected" && info.reason.code === "no_such_record") {
      message.textContent += " The audit log has no entry about it either.";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The live audit tail

const tail = {
  filters: { agent: "", record: "", kind: "" },
  startSeq: null, // where this tail started (for the current filters)
  lastSeq: 0, // the highest seq received: a resumed tail asks from the next one
  fromSeq: null, // what the running tail request asked from
  queue: [], // rows waiting to be put on the page
};

const kindSelect = document.querySelector("#tail-filters select[name=kind]");
for (const [kind, text] of Object.entries(AUDIT_KINDS)) {
  kindSelect.append(new Option(text, kind));
}

function startTail(token) {
  tail.startSeq = null;
  tail.lastSeq = 0;
  tail.fromSeq = null;
  tail.queue = [];
  $("tail").tBodies[0].replaceChildren();
  const link = new Link(token, {
    up: (session) => tailUp(link, session),
    down: (attempt) => linkDown(link, attempt),
    refused: (e) => refusedLater(e),
    retryFirst: true,
  });
  tailLink = link;
  links.add(link);
  link.start().catch((e) => {
    if (!e.stopped) refusedLater(e);
  });
  showTailStatus();
}

async function tailUp(link, session) {
  linkUp(link);
  try {
    if (tail.startSeq === null) {
      // A fresh tail shows the most recent entries first, then follows.
      const { audit_last_seq } = await session.request({ type: "Status" });
      if (tail.startSeq === null) tail.startSeq = Math.max(1, audit_last_seq - TAIL_ROWS + 1);
    }
    const from = tail.lastSeq ? tail.lastSeq + 1 : tail.startSeq;
    tail.fromSeq = from;
    showTailStatus();
    const frame = { type: "AuditTail", follow: true, from_seq: from };
    if (tail.filters.agent) frame.agent = tail.filters.agent;
    if (tail.filters.record) frame.record = tail.filters.record;
    await session.stream(frame, (f) => tailFrame(link, f), () => false);
  } catch (e) {
    if (e instanceof Lost || tailLink !== link) return;
    // The tail ended on the server's side (the log could not be read): start it again shortly.
    $("tail-status").textContent = `The audit tail stopped (${e.code}): restarting…`;
    await sleep(2000);
    session.end();
  }
}

function tailFrame(link, f) {
  if (tailLink !== link) return;
  if (f.type === "AuditTrimmed") {
    if (f.to_seq <= tail.lastSeq) return;
    tail.lastSeq = f.to_seq;
    tail.queue.push(trimmedRow(f, 10));
  } else if (f.type === "Audit") {
    if (f.seq <= tail.lastSeq) return; // already shown
    tail.lastSeq = f.seq;
    if (tail.filters.kind && f.kind !== tail.filters.kind) {
      scheduleTailFlush();
      return;
    }
    tail.queue.push(auditRow(f, true));
  } else {
    return;
  }
  scheduleTailFlush();
}

let flushPending = false;

/** Puts the rows received since the last flush on the page at once, newest at the top. */
function scheduleTailFlush() {
  if (flushPending) return;
  flushPending = true;
  setTimeout(() => {
    flushPending = false;
    const body = $("tail").tBodies[0];
    const rows = tail.queue.splice(0).slice(-TAIL_ROWS).reverse();
    body.prepend(...rows);
    while (body.rows.length > TAIL_ROWS) body.lastElementChild.remove();
    showTailStatus();
  }, 0);
}

function showTailStatus() {
  const parts = [];
  if (tail.fromSeq !== null) parts.push(`Following from seq ${tail.fromSeq}`);
  else parts.push("Starting the tail…");
  if (tail.lastSeq) parts.push(`last entry received: seq ${tail.lastSeq}`);
  const f = tail.filters;
  const only = [f.agent && `agent ${f.agent}`, f.record && `record ${f.record}`, f.kind && `“${AUDIT_KINDS[f.kind]}” only`].filter(Boolean);
  if (only.length) parts.push(`filtered: ${only.join(", ")}`);
  $("tail-status").textContent = `${parts.join("; ")}.`;
}

$("tail-filters").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target.elements;
  tail.filters = { agent: form.agent.value.trim(), record: form.record.value.trim(), kind: form.kind.value };
  // A tail cannot be stopped on its connection: the old connection goes, a new one follows.
  if (!tailLink) return;
  const token = tailLink.token;
  links.delete(tailLink);
  downSince.delete(tailLink);
  tailLink.stop();
  startTail(token);
  showConnection();
});

// ---------------------------------------------------------------------------------------------
// Rows and words

function auditRow(f, withRecord) {
  const tr = document.createElement("tr");
  tr.dataset.seq = String(f.seq);
  tr.dataset.kind = f.kind;
  const time = document.createElement("time");
  time.dateTime = f.ts;
  time.textContent = utc(f.ts);
  const when = cell("");
  when.append(time);
  let access = "";
  // A first grant is written with previous "revoked" (no access before): only a real change of
  // level is worth showing, as `baton audit timeline` does.
  if (f.access && f.previous && f.previous !== "revoked") access = `${ACCESS_TEXT[f.access] ?? f.access} (was ${ACCESS_TEXT[f.previous] ?? f.previous})`;
  else if (f.access) access = ACCESS_TEXT[f.access] ?? f.access;
  const cause = cell("");
  if (f.code) {
    cause.append(Object.assign(document.createElement("strong"), { textContent: f.code }), f.cause ? `: ${f.cause}` : "");
  } else {
    // Causes that are names (established, do_not_call, grace_expired) read as words; others are text.
    cause.textContent = f.cause ? (/^[a-z_]+$/.test(f.cause) ? words(f.cause) : f.cause) : "";
  }
  const kind = cell(AUDIT_KINDS[f.kind] ?? f.kind);
  kind.className = `kind ${f.kind}`;
  tr.append(when, cell(String(f.seq)), kind, cell(f.agent ?? ""), cell(f.dn ?? ""), cell(f.call ?? ""));
  if (withRecord) tr.append(cell(f.record ?? ""));
  const accessCell = cell(access);
  accessCell.className = "access";
  tr.append(accessCell, cause, cell(f.request ?? ""));
  return tr;
}

function trimmedRow(f, columns) {
  const tr = messageRow(columns, `Entries ${f.from_seq} to ${f.to_seq} were removed by retention (audit_retention_entries) before they could be shown.`, "trimmed");
  tr.dataset.trimmed = `${f.from_seq}-${f.to_seq}`;
  return tr;
}

function messageRow(columns, text, className) {
  const tr = document.createElement("tr");
  tr.className = className;
  const td = cell(text);
  td.colSpan = columns;
  tr.append(td);
  return tr;
}

function cell(text, tag = "td") {
  const c = document.createElement(tag);
  if (tag === "th") c.scope = "row";
  c.textContent = text;
  return c;
}

function holding(who, access) {
  const span = document.createElement("span");
  span.className = "holding";
  span.dataset.access = access;
  span.append(`${who} `, Object.assign(document.createElement("span"), { className: `badge ${access}`, textContent: ACCESS_TEXT[access] ?? access }));
  return span;
}

const words = (s) => String(s).replaceAll("_", " ");
/** "2026-12-01T22:45:39.783Z" as "2026-12-01 22:45:39.783". */
const utc = (ts) => String(ts).replace("T", " ").replace(/Z$/, "");
const clock = (d) => d.toISOString().slice(11, 19);

function duration(seconds) {
  if (typeof seconds !== "number") return "–";
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (d) return `${d} d ${h} h ${m} min`;
  if (h) return `${h} h ${m} min ${s} s`;
  if (m) return `${m} min ${s} s`;
  return `${s} s`;
}

// ---------------------------------------------------------------------------------------------
// A reloaded page reconnects with the token this tab kept.

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) {
  $("login").hidden = true;
  $("status").textContent = "Connecting…";
  logIn(saved, { fromReload: true }).catch(loginFailed);
}
