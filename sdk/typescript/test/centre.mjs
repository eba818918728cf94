// A real `baton serve` for the SDK's tests, and the switch link, dialer, desktops and admin
// connections a centre needs, spoken over Baton's TCP framing (4-byte big-endian length, then
// JSON), plus a TCP proxy that a test can cut to play a network drop.

import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync, existsSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, "../../..");

/** A port free at the time of the call. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** The read-only admin token of the servers `startServer` runs (`[tokens] admin_read`). */
export const ADMIN_READ_TOKEN = "watch-but-do-not-touch";

/**
 * Starts `baton serve` (the release build) on free ports; `extra` is more TOML. Unless `extra`
 * has a `[tokens]` table of its own, the server also takes `ADMIN_READ_TOKEN` for admin sessions
 * that may only read.
 */
export async function startServer(extra = "") {
  const exe = process.env.BATON_EXE ?? path.join(repo, "target/release/baton");
  if (!existsSync(exe)) throw new Error(`${exe} is missing: run cargo build --release first`);
  const dir = mkdtempSync(path.join(tmpdir(), "baton-sdk-"));
  const [tcp, http] = [await freePort(), await freePort()];
  const config = path.join(dir, "baton.toml");
  writeFileSync(
    config,
    `listen = "127.0.0.1:${tcp}"\nhttp_listen = "127.0.0.1:${http}"\ndata_dir = ${JSON.stringify(path.join(dir, "data"))}\n` +
      ["heartbeat_ms = 1000", "resume_grace_ms = 20000"]
        .filter((line) => !extra.includes(line.split(" ")[0]))
        .map((line) => `${line}\n`)
        .join("") +
      extra +
      (extra.includes("[tokens]") ? "" : `\n[tokens]\nadmin_read = ${JSON.stringify(ADMIN_READ_TOKEN)}\n`),
  );
  const child = spawn(exe, ["serve", "--config", config], { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  child.stderr.on("data", (d) => (log += d));
  const deadline = Date.now() + 20000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`baton serve exited:\n${log}`);
    if (await canConnect(http)) break;
    if (Date.now() > deadline) throw new Error(`baton serve did not listen:\n${log}`);
    await sleep(50);
  }
  return {
    tcp,
    http,
    url: `ws://127.0.0.1:${http}/ws`,
    log: () => log,
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => (child.exitCode !== null ? r() : child.once("exit", r)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A framed TCP client of one role (switch, dialer, admin). */
export class Peer {
  static async open(port, role, token) {
    const p = new Peer(net.connect(port, "127.0.0.1"));
    await new Promise((resolve, reject) => {
      p.socket.once("connect", resolve);
      p.socket.once("error", reject);
    });
    const welcome = await p.request({ type: "Hello", protocol: 1, role, token });
    if (welcome.type !== "Welcome") throw new Error(`Hello refused: ${JSON.stringify(welcome)}`);
    return p;
  }

  constructor(socket) {
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    this.frames = [];
    this.waiters = [];
    this.ref = 1;
    socket.on("data", (chunk) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      while (this.buf.length >= 4) {
        const len = this.buf.readUInt32BE(0);
        if (this.buf.length < 4 + len) break;
        const frame = JSON.parse(this.buf.subarray(4, 4 + len).toString("utf8"));
        this.buf = this.buf.subarray(4 + len);
        this.frames.push(frame);
        for (const w of this.waiters.splice(0)) w();
      }
    });
  }

  send(frame) {
    const body = Buffer.from(JSON.stringify(frame), "utf8");
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length);
    this.socket.write(Buffer.concat([head, body]));
  }

  /** Waits for the first received frame matching `pred` and takes it. */
  async take(pred, ms = 10000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.frames.findIndex(pred);
      if (i >= 0) return this.frames.splice(i, 1)[0];
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no matching frame within ${ms} ms; have ${JSON.stringify(this.frames)}`);
      await new Promise((r) => {
        this.waiters.push(r);
        setTimeout(r, left);
      });
    }
  }

  /** Sends a request and returns its answer. */
  async request(frame) {
    const ref = this.ref++;
    this.send({ ...frame, ref });
    return this.take((f) => f.ref === ref);
  }

  /** A switch event, acknowledged. */
  async event(frame) {
    const ack = await this.request(frame);
    if (ack.type !== "Ack") throw new Error(`event refused: ${JSON.stringify(ack)}`);
  }

  close() {
    this.socket.destroy();
  }
}

/** A desktop over TCP (open mode), logged in as `agent` on `dn`; `session` is its resume token. */
export async function desktop(server, agent, dn) {
  const d = await Peer.open(server.tcp, "desktop", "desk-secret");
  const answer = await d.request({ type: "Login", agent, dn });
  if (answer.type !== "LoggedIn") throw new Error(`Login refused: ${JSON.stringify(answer)}`);
  d.session = answer.session;
  return d;
}

/** An admin connection over TCP, read-only (`ADMIN_READ_TOKEN`). */
export function admin(server) {
  return Peer.open(server.tcp, "admin", ADMIN_READ_TOKEN);
}

/** The switch link and the dialer of a centre, on `server`. */
export async function centre(server) {
  const sw = await Peer.open(server.tcp, "switch", "switch-secret");
  const dialer = await Peer.open(server.tcp, "dialer", "dialer-secret");
  /** The dialer attaches `record` to `call` (before it reaches an agent). */
  async function attach(call, record, data = { name: `Customer of ${record}` }) {
    const attached = await dialer.request({ type: "AttachRecord", call, record, campaign: "spring", data });
    if (attached.type !== "RecordAttached") throw new Error(JSON.stringify(attached));
  }
  return {
    sw,
    dialer,
    attach,
    /** The dialer attaches `record` to `call`, which rings and is answered on `dn`. */
    async answered(call, record, dn, data = { name: `Customer of ${record}` }) {
      await attach(call, record, data);
      await sw.event({ type: "Ringing", call, dn, ani: "+15550100" });
      await sw.event({ type: "Established", call, dn });
    },
    /** The agent on `from` consults `to` about `call` on the consultation call `consult`, answered. */
    async consulted(call, consult, from, to) {
      await sw.event({ type: "Ringing", call: consult, dn: to, from_dn: from, consult_of: call });
      await sw.event({ type: "Established", call: consult, dn: to });
    },
    close() {
      sw.close();
      dialer.close();
    },
  };
}

/** A TCP proxy to `port` whose connections a test can cut, as a network drop would. */
export async function proxy(port) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, "127.0.0.1");
    sockets.add(client);
    sockets.add(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("error", end);
    upstream.on("error", end);
    client.on("close", end);
    upstream.on("close", end);
  });
  let refusing = false;
  server.on("connection", (c) => {
    if (refusing) c.destroy();
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port: own } = server.address();
  return {
    url: `ws://127.0.0.1:${own}/ws`,
    /** Cuts every connection; with `hold`, refuses new ones until `heal()`. */
    cut(hold = false) {
      refusing = hold;
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    heal() {
      refusing = false;
    },
    close() {
      this.cut();
      server.close();
    },
  };
}

/**
 * A standby node of a cluster as a desktop meets it: it answers every Hello with `not_active`,
 * naming `active` (the active node's host:port) when given, and closes, as PROTOCOL.md section 20
 * says. `hellos` counts the Hellos it answered.
 */
export async function standby(active) {
  const { WebSocketServer } = await import("ws");
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((r) => wss.once("listening", r));
  const node = { hellos: 0 };
  wss.on("connection", (ws) => {
    ws.on("message", (data) => {
      const hello = JSON.parse(String(data));
      node.hellos++;
      const error = { ref: hello.ref, type: "Error", code: "not_active" };
      error.message = active
        ? `this node is a standby; the active node is ${active}`
        : "this node is a standby and no node is active yet; try again shortly";
      if (active) error.active = active;
      ws.send(JSON.stringify(error));
      ws.close(1013, "standby");
    });
  });
  return Object.assign(node, {
    url: `ws://127.0.0.1:${wss.address().port}/ws`,
    close: () => new Promise((r) => wss.close(r)),
  });
}
