// The SDK against a real `baton serve`, in Node with the `ws` package as its WebSocket: messages
// decode as the schema says, requests always settle, the live model follows the pushes, and a
// dropped connection or a reloaded page resumes the session with nothing lost or doubled.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import WebSocket from "ws";
import {
  connect,
  decodeDesktopFrame,
  savedSession,
  BatonError,
  ConnectionLostError,
  ProtocolError,
  DESKTOP_MESSAGE_TYPES,
} from "../dist/baton.js";
import { startServer, centre, proxy, repo, sleep, standby } from "./centre.mjs";

/** An in-memory sessionStorage, shared by the "pages" of one test as a browser tab's is. */
class TabStorage {
  constructor() {
    this.items = new Map();
  }
  getItem(k) {
    return this.items.has(k) ? this.items.get(k) : null;
  }
  setItem(k, v) {
    this.items.set(k, String(v));
  }
  removeItem(k) {
    this.items.delete(k);
  }
}

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

const open = (opts) =>
  connect({ token: "desk-secret", WebSocket, storage: new TabStorage(), ...opts });

/** Resolves with the first event `name` whose payload satisfies `pred`. */
function next(desk, name, pred = () => true, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no "${name}" event within ${ms} ms`));
    }, ms);
    const off = desk.on(name, (e) => {
      if (pred(e)) {
        clearTimeout(timer);
        off();
        resolve(e);
      }
    });
  });
}

/** Resolves once `pred()` holds, checking now and after every change of the model. */
function until(desk, pred, ms = 10000) {
  if (pred()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`the model did not get there within ${ms} ms`));
    }, ms);
    const off = desk.on("change", () => {
      if (pred()) {
        clearTimeout(timer);
        off();
        resolve();
      }
    });
  });
}

test("every desktop frame of protocol/examples decodes, and the SDK knows exactly the schema's desktop messages", () => {
  const schema = JSON.parse(readFileSync(path.join(repo, "protocol/schema/baton.schema.json"), "utf8"));
  const listed = schema.$defs.desktop_from_server.properties.type.enum;
  assert.deepEqual([...DESKTOP_MESSAGE_TYPES].sort(), [...listed].sort());
  const dir = path.join(repo, "protocol/examples/server");
  let decoded = 0;
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".json"))) {
    const text = readFileSync(path.join(dir, file), "utf8");
    const type = JSON.parse(text).type;
    if (!listed.includes(type)) {
      assert.throws(() => decodeDesktopFrame(text), ProtocolError, `${file} is not a desktop frame`);
      continue;
    }
    assert.equal(decodeDesktopFrame(text).type, type, file);
    decoded++;
  }
  assert.ok(decoded >= 40, `only ${decoded} desktop examples`);
  for (const bad of [
    "[1]",
    "not json",
    '{"type":"AccessChanged","record":"R1","access":"full","previous":"revoked","cause":"established"}',
    '{"type":"Record","record":"R1","access":"full","data":{},"context":{},"final":7}',
    '{"type":"Pong","ref":"1"}',
  ]) {
    assert.throws(() => decodeDesktopFrame(bad), ProtocolError, bad);
  }
});

test("a record pops with full access and its data, and requests settle with replies or typed errors", async () => {
  const c = await centre(server);
  const desk = await open({ url: server.url, agent: "1001", dn: "7001" });
  try {
    assert.equal(desk.state, "open");
    const popped = next(desk, "access", (e) => e.record.record === "R1");
    await c.answered("C1", "R1", "7001", { name: "Dana", plan: "silver" });
    const { record, push } = await popped;
    assert.equal(record.access, "full");
    assert.equal(push.cause, "established");
    assert.deepEqual(record.data, { name: "Dana", plan: "silver" });
    assert.equal(desk.calls.get("C1")?.state, "established");

    const updated = await desk.updateRecord("R1", { call_result: "answered", fields: { note: "gold" } });
    assert.equal(updated.version, 1);
    assert.deepEqual(desk.records.get("R1").context, { call_result: "answered", fields: { note: "gold" } });
    const read = await desk.getRecord("R1");
    assert.equal(read.access, "full");
    assert.equal(read.final, null);

    await assert.rejects(desk.getRecord("R-unknown"), (e) => e instanceof BatonError && e.code === "no_such_record");
    await desk.recordProcessed("R1", { call_result: "sale" });
    assert.equal(desk.records.get("R1").access, "revoked");
    assert.deepEqual(desk.records.get("R1").final, { outcome: "processed", by: "1001" });
    await assert.rejects(
      desk.recordProcessed("R1"),
      (e) => e instanceof BatonError && e.code === "already_final" && e.by === "1001" && e.outcome === "processed",
    );
    const outcome = await c.dialer.take((f) => f.type === "RecordOutcome" && f.record === "R1");
    assert.equal(outcome.by, "1001");
  } finally {
    desk.close();
    c.close();
  }
});

test("a consultee holds the record read-only, and a two-step transfer moves full access to it", async () => {
  const c = await centre(server);
  const a = await open({ url: server.url, agent: "2001", dn: "7201" });
  const b = await open({ url: server.url, agent: "2002", dn: "7202" });
  try {
    const aFull = next(a, "access", (e) => e.record.record === "R2" && e.record.access === "full");
    await c.answered("C2", "R2", "7201");
    await aFull;
    const bRead = next(b, "access", (e) => e.record.access === "read_only");
    await c.sw.event({ type: "Ringing", call: "C2c", dn: "7202", from_dn: "7201", consult_of: "C2" });
    await c.sw.event({ type: "Established", call: "C2c", dn: "7202" });
    const { record } = await bRead;
    assert.equal(record.call, "C2", "the consultee's record names the customer call");
    assert.equal(b.calls.get("C2c")?.consultOf, "C2");
    await assert.rejects(b.updateRecord("R2", { fields: { x: 1 } }), (e) => e instanceof BatonError && e.code === "read_only");

    const aRevoked = next(a, "access", (e) => e.record.access === "revoked");
    const bFull = next(b, "access", (e) => e.record.access === "full");
    await c.sw.event({ type: "Transferred", call: "C2", from_dn: "7201", to_dn: "7202", kind: "two_step", consult_call: "C2c" });
    assert.equal((await aRevoked).push.cause, "transfer");
    assert.equal((await bFull).push.previous, "read_only");
    assert.equal(b.calls.has("C2c"), false);
    assert.equal(b.calls.get("C2")?.state, "established");
  } finally {
    a.close();
    b.close();
    c.close();
  }
});

test("a request in flight when the connection drops is rejected, and the desk reconnects and resumes", async () => {
  const c = await centre(server);
  const net = await proxy(server.http);
  const desk = await open({ url: net.url, agent: "3001", dn: "7301", maxBackoffMs: 400 });
  try {
    await c.answered("C3", "R3", "7301");
    await until(desk, () => desk.records.get("R3")?.access === "full");

    // The network goes away with a request on the wire.
    const reconnecting = next(desk, "state", (s) => s === "reconnecting");
    net.cut(true);
    const inFlight = desk.getRecord("R3");
    await assert.rejects(inFlight, (e) => e instanceof ConnectionLostError);
    await reconnecting;
    await assert.rejects(desk.getRecord("R3"), (e) => e instanceof ConnectionLostError);

    // While the desk is away, the call is transferred away from it.
    await c.sw.event({ type: "Transferred", call: "C3", from_dn: "7301", to_dn: "7399", kind: "single_step" });
    const revoked = next(desk, "access", (e) => e.record.record === "R3");
    const session = next(desk, "session");
    net.heal();
    assert.equal((await session).resumed, true);
    const { record, push } = await revoked;
    assert.equal(record.access, "revoked");
    assert.equal(push.cause, "resume");
    assert.equal(desk.state, "open");
    assert.equal(desk.calls.size, 0, "the replay shows no call left on the DN");

    // A second drop replays nothing new: the revoked record is not told twice.
    let told = 0;
    const off = desk.on("access", () => told++);
    const again = next(desk, "session");
    net.cut();
    assert.equal((await again).resumed, true);
    await sleep(200);
    off();
    assert.equal(told, 0);
    assert.equal(desk.records.get("R3").access, "revoked");
  } finally {
    desk.close();
    net.close();
    c.close();
  }
});

test("a reloaded page resumes its session from sessionStorage with the record and the call", async () => {
  const c = await centre(server);
  const tab = new TabStorage();
  const first = await connect({ url: server.url, agent: "4001", dn: "7401", token: "desk-secret", WebSocket, storage: tab });
  await c.answered("C4", "R4", "7401", { name: "Reyes" });
  await until(first, () => first.records.get("R4")?.access === "full");
  await first.updateRecord("R4", { fields: { note: "before reload" } });
  first.close(); // the page goes away: no Logout

  assert.deepEqual(savedSession(tab), { url: server.url, agent: "4001", dn: "7401" });
  const saved = savedSession(tab);
  const page = await connect({ ...saved, token: "desk-secret", WebSocket, storage: tab });
  try {
    await until(page, () => page.records.get("R4")?.access === "full" && page.calls.has("C4"));
    const r = page.records.get("R4");
    assert.equal(r.access, "full");
    assert.deepEqual(r.data, { name: "Reyes" });
    assert.deepEqual(r.context.fields, { note: "before reload" });
    assert.equal(page.calls.get("C4")?.state, "established");
    assert.equal(page.records.size, 1, "nothing doubled");
    await page.recordProcessed("R4");
    const done = await page.logout();
    assert.equal(done.type, "LoggedOut");
    assert.equal(savedSession(tab), null, "a logout forgets the session");
  } finally {
    page.close();
    c.close();
  }
});

test("a cluster's standby sends the desk to the active node it names", async () => {
  const node = await standby(`127.0.0.1:${server.http}`);
  const c = await centre(server);
  const desk = await open({ url: node.url, agent: "6001", dn: "7601" });
  try {
    assert.equal(desk.state, "open");
    assert.equal(node.hellos, 1, "the standby was asked once, then the active node");
    await c.answered("C6", "R6", "7601");
    await until(desk, () => desk.records.get("R6")?.access === "full");
  } finally {
    desk.close();
    c.close();
    await node.close();
  }
});

test("with a node list, the desk passes over a standby that knows no active node, also when it reconnects", async () => {
  const node = await standby(undefined);
  const net = await proxy(server.http);
  const c = await centre(server);
  const desk = await open({ url: node.url, nodes: [net.url], agent: "6002", dn: "7602", maxBackoffMs: 300 });
  try {
    assert.equal(desk.state, "open");
    assert.equal(node.hellos, 1);
    await c.answered("C7", "R7", "7602");
    await until(desk, () => desk.records.get("R7")?.access === "full");

    // The active node goes away for a while: the desk goes round the nodes, the standby among
    // them, and resumes where the active node is again.
    net.cut(true);
    await next(desk, "state", (st) => st === "reconnecting");
    const deadline = Date.now() + 10000;
    while (node.hellos < 2 && Date.now() < deadline) await sleep(50);
    assert.ok(node.hellos >= 2, "the standby was tried while the active node was away");
    const session = next(desk, "session");
    net.heal();
    assert.equal((await session).resumed, true);
    assert.equal(desk.records.get("R7").access, "full");
  } finally {
    desk.close();
    net.close();
    c.close();
    await node.close();
  }
});

test("a standby alone is refused with not_active once the nodes have been tried", async () => {
  const node = await standby(undefined);
  try {
    await assert.rejects(
      connect({ url: node.url, agent: "6003", dn: "7603", token: "desk-secret", WebSocket, storage: new TabStorage() }),
      (e) => e instanceof BatonError && e.code === "not_active" && e.active === undefined,
    );
  } finally {
    await node.close();
  }
});

test("a wrong desktop token is refused with a typed error and no retry", async () => {
  await assert.rejects(
    connect({ url: server.url, agent: "5001", dn: "7501", token: "guess", WebSocket, storage: new TabStorage() }),
    (e) => e instanceof BatonError && e.code === "auth_failed",
  );
});
