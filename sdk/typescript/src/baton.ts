// Baton desktop SDK: a browser (or Node 20+) agent desktop over Baton's WebSocket endpoint.
//
// One module, no dependencies. `connect()` opens the WebSocket, says Hello, logs the agent in and
// keeps the session: heartbeats, reconnection with backoff, and resumption with the session token
// (kept in sessionStorage, so a page reload resumes too). Every request returns a Promise that
// always settles: with the reply, a BatonError carrying the server's code, or a
// ConnectionLostError. A small live model (calls on the DN, records with their access, data and
// context) follows every push. The wire protocol is protocol/PROTOCOL.md; the message types below
// follow protocol/schema/baton.schema.json.

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

export type Access = "full" | "read_only" | "revoked";
export type AccessCause =
  | "established"
  | "transfer"
  | "consultation"
  | "conference"
  | "left"
  | "released"
  | "logout"
  | "admin"
  | "resume";
export type Outcome =
  | "processed"
  | "rejected"
  | "cancelled"
  | "do_not_call"
  | "rescheduled"
  | "returned"
  | "stale";
/** The codes of version 1; a later server may send others, hence `string`. */
export type ErrorCode =
  | "bad_frame"
  | "hello_required"
  | "auth_failed"
  | "protocol_mismatch"
  | "unknown_type"
  | "bad_request"
  | "wrong_role"
  | "not_logged_in"
  | "dn_in_use"
  | "no_such_record"
  | "access_denied"
  | "read_only"
  | "already_final"
  | "record_busy"
  | "overloaded"
  | "unavailable"
  | "dn_not_allowed"
  | "not_active"
  | (string & {});
export type LogoutCause = "desktop" | "phone" | "replaced" | "server";
export type DncScope = "record" | "chain";
export type Callback = "personal" | "campaign";
export type Json = Record<string, unknown>;

export interface Context {
  call_result?: string;
  fields: Json;
}
export interface FinalInfo {
  outcome: Outcome;
  by?: string;
  at: string;
}
export interface Holder {
  agent: string;
  access: Access;
}

interface Reply {
  ref?: number;
}
export interface Welcome extends Reply {
  type: "Welcome";
  protocol: number;
  server: string;
  heartbeat_ms: number;
}
export interface Ping extends Reply {
  type: "Ping";
}
export interface Pong extends Reply {
  type: "Pong";
}
export interface ErrorMessage extends Reply {
  type: "Error";
  code: ErrorCode;
  message: string;
  access?: Access;
  holders?: Holder[];
  outcome?: Outcome;
  by?: string;
  retry_after_ms?: number;
  /** With not_active: the host:port of the cluster's active node, when one is known. */
  active?: string;
}
export interface LoggedIn extends Reply {
  type: "LoggedIn";
  agent: string;
  dn: string;
  session: string;
  resumed: boolean;
}
export interface LoggedOut extends Reply {
  type: "LoggedOut";
  cause: LogoutCause;
}
export interface LogoutPending extends Reply {
  type: "LogoutPending";
  records: string[];
}
export interface RecordMessage extends Reply {
  type: "Record";
  record: string;
  access: Access;
  data: Json;
  context: Context;
  final: FinalInfo | null;
}
export interface RecordUpdated extends Reply {
  type: "RecordUpdated";
  record: string;
  version: number;
}
export interface RecordProcessedAck extends Reply {
  type: "RecordProcessedAck";
  record: string;
}
export interface ChainedRecord extends Reply {
  type: "ChainedRecord";
  record: string;
  chain_n: number;
  data: Json;
  access: Access;
}
export interface ChainedRecordsEnd extends Reply {
  type: "ChainedRecordsEnd";
  record: string;
  count: number;
}
export interface RecordRejected extends Reply {
  type: "RecordRejected";
  record: string;
}
export interface RecordCancelled extends Reply {
  type: "RecordCancelled";
  record: string;
}
export interface DoNotCallAck extends Reply {
  type: "DoNotCallAck";
  record: string;
  scope: DncScope;
}
export interface Rescheduled extends Reply {
  type: "Rescheduled";
  record: string;
  at: string;
  callback: Callback;
}
export interface AccessChanged {
  type: "AccessChanged";
  record: string;
  access: Access;
  previous: Access;
  cause: AccessCause;
  call: string;
  data?: Json;
  context?: Context;
}
export interface RecordChanged {
  type: "RecordChanged";
  record: string;
  version: number;
  call_result?: string;
  fields?: Json;
  by: string;
}
export interface RecordFinalized {
  type: "RecordFinalized";
  record: string;
  by: string;
  outcome: Outcome;
}
export interface CallAlerting {
  type: "CallAlerting";
  call: string;
  dn: string;
  record?: string;
  consult_of?: string;
}
export interface CallEstablished {
  type: "CallEstablished";
  call: string;
  dn: string;
}
export interface CallCleared {
  type: "CallCleared";
  call: string;
  dn: string;
  cause: string;
}

/** Every frame the server sends a desktop. */
export type DesktopMessage =
  | Welcome
  | Ping
  | Pong
  | ErrorMessage
  | LoggedIn
  | LoggedOut
  | LogoutPending
  | RecordMessage
  | RecordUpdated
  | RecordProcessedAck
  | ChainedRecord
  | ChainedRecordsEnd
  | RecordRejected
  | RecordCancelled
  | DoNotCallAck
  | Rescheduled
  | AccessChanged
  | RecordChanged
  | RecordFinalized
  | CallAlerting
  | CallEstablished
  | CallCleared;

// What each message must carry, by JSON type: the decoder's whole knowledge. "?" marks an
// optional field; "|null" one that may be null. Fields not listed are ignored, as the protocol
// asks of clients.
type Kind = "string" | "number" | "boolean" | "object" | "array";
const FIELDS: Record<DesktopMessage["type"], Record<string, string>> = {
  Welcome: { protocol: "number", server: "string", heartbeat_ms: "number" },
  Ping: {},
  Pong: {},
  Error: {
    code: "string",
    message: "string",
    access: "string?",
    holders: "array?",
    outcome: "string?",
    by: "string?",
    retry_after_ms: "number?",
  },
  LoggedIn: { agent: "string", dn: "string", session: "string", resumed: "boolean" },
  LoggedOut: { cause: "string" },
  LogoutPending: { records: "array" },
  Record: {
    record: "string",
    access: "string",
    data: "object",
    context: "object",
    final: "object|null",
  },
  RecordUpdated: { record: "string", version: "number" },
  RecordProcessedAck: { record: "string" },
  ChainedRecord: { record: "string", chain_n: "number", data: "object", access: "string" },
  ChainedRecordsEnd: { record: "string", count: "number" },
  RecordRejected: { record: "string" },
  RecordCancelled: { record: "string" },
  DoNotCallAck: { record: "string", scope: "string" },
  Rescheduled: { record: "string", at: "string", callback: "string" },
  AccessChanged: {
    record: "string",
    access: "string",
    previous: "string",
    cause: "string",
    call: "string",
    data: "object?",
    context: "object?",
  },
  RecordChanged: {
    record: "string",
    version: "number",
    call_result: "string?",
    fields: "object?",
    by: "string",
  },
  RecordFinalized: { record: "string", by: "string", outcome: "string" },
  CallAlerting: { call: "string", dn: "string", record: "string?", consult_of: "string?" },
  CallEstablished: { call: "string", dn: "string" },
  CallCleared: { call: "string", dn: "string", cause: "string" },
};

/** The type of every frame a desktop can receive. */
export const DESKTOP_MESSAGE_TYPES = Object.keys(FIELDS) as DesktopMessage["type"][];

function kindOf(v: unknown): Kind | "null" | "other" {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  const t = typeof v;
  return t === "string" || t === "number" || t === "boolean" || t === "object" ? t : "other";
}

/** A frame that is not a message this SDK knows, or lacks a field it must have. */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}

/** Decodes one frame a desktop receives; throws ProtocolError for anything else. */
export function decodeDesktopFrame(text: string): DesktopMessage {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ProtocolError("the frame is not JSON");
  }
  if (kindOf(value) !== "object") throw new ProtocolError("the frame is not a JSON object");
  const frame = value as Json;
  const type = frame["type"];
  if (typeof type !== "string" || !(type in FIELDS)) {
    throw new ProtocolError(`unknown message type ${JSON.stringify(type)}`);
  }
  if (frame["ref"] !== undefined && typeof frame["ref"] !== "number") {
    throw new ProtocolError(`${type}: ref is not a number`);
  }
  for (const [field, spec] of Object.entries(FIELDS[type as DesktopMessage["type"]])) {
    const optional = spec.endsWith("?");
    const kinds = spec.replace("?", "").split("|");
    const v = frame[field];
    if (v === undefined) {
      if (optional) continue;
      throw new ProtocolError(`${type}: missing field ${field}`);
    }
    if (!kinds.includes(kindOf(v))) {
      throw new ProtocolError(`${type}: field ${field} is not ${kinds.join(" or ")}`);
    }
  }
  return frame as unknown as DesktopMessage;
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** The server refused a request; `code` says why (PROTOCOL.md section 9). */
export class BatonError extends Error {
  override name = "BatonError";
  readonly code: ErrorCode;
  /** With access_denied: the agent's access, and who holds the record now. */
  readonly access?: Access;
  readonly holders?: Holder[];
  /** With already_final: how the record ended, and who ended it. */
  readonly outcome?: Outcome;
  readonly by?: string;
  /** With auth_failed while logins are throttled: how long to wait. */
  readonly retryAfterMs?: number;
  /** With not_active: where the cluster's active node is. */
  readonly active?: string;

  constructor(frame: ErrorMessage) {
    super(frame.message);
    this.code = frame.code;
    if (frame.access !== undefined) this.access = frame.access;
    if (frame.holders !== undefined) this.holders = frame.holders;
    if (frame.outcome !== undefined) this.outcome = frame.outcome;
    if (frame.by !== undefined) this.by = frame.by;
    if (frame.retry_after_ms !== undefined) this.retryAfterMs = frame.retry_after_ms;
    if (frame.active !== undefined) this.active = frame.active;
  }
}

/**
 * The connection ended before the answer came. The request may or may not have been applied:
 * after the SDK has resumed the session, look at the model (or ask again with a read).
 */
export class ConnectionLostError extends Error {
  override name = "ConnectionLostError";
  readonly code = "connection_lost";
}

// ---------------------------------------------------------------------------------------------
// The live model
// ---------------------------------------------------------------------------------------------

export interface CallState {
  call: string;
  dn: string;
  state: "alerting" | "established";
  /** The record the call carries (for a consultation, the consulted call's record). */
  record?: string;
  /** For a consultation call: the customer call it is about. */
  consultOf?: string;
}

export interface RecordState {
  record: string;
  access: Access;
  /** The customer call the record is attached to. */
  call: string;
  data: Json;
  context: Context;
  /** Accepted updates so far, when known. */
  version?: number;
  /** Set once the record has its final outcome. */
  final?: { outcome: Outcome; by: string };
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export interface DeskEvents {
  /** The agent's access to a record changed (a replayed push that changes nothing is not told). */
  access: { record: RecordState; push: AccessChanged };
  /** Another holder updated a record. */
  record: { record: RecordState; push: RecordChanged };
  /** A record got its final outcome by someone else. */
  final: { record: RecordState; push: RecordFinalized };
  /** A call on the DN rang, was answered, or left (then `call` is undefined). */
  call: { call: CallState | undefined; push: CallAlerting | CallEstablished | CallCleared };
  /** The session ended (`push.cause`); the SDK does not reconnect after this. */
  loggedOut: LoggedOut;
  /** The connection's state. */
  state: ConnectionState;
  /** Logged in: `resumed` is false for a fresh session (the model starts empty). */
  session: LoggedIn;
  /** Something in the model changed. */
  change: void;
  /** Every frame as it arrives, replies and pushes. */
  frame: DesktopMessage;
}

// ---------------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------------

/** What the SDK needs of a WebSocket: the browser's, or one passed in (Node: the `ws` package). */
export interface WebSocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Where the session token is kept between page loads (sessionStorage by default). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface ConnectOptions {
  /** The WebSocket endpoint, e.g. "wss://baton.example:7380/ws". */
  url: string;
  /**
   * A cluster: the WebSocket endpoints of its other nodes. The desk goes to whichever node is
   * active: a standby's `not_active` answer names the active node, which is tried next; a node
   * that cannot be reached is passed over for the next one. `url` is tried first.
   */
  nodes?: string[];
  agent: string;
  dn: string;
  /** directory mode: the agent's password. Kept in memory only, for logging in again. */
  password?: string;
  /** jwt mode: a token from the centre's identity provider. */
  jwt?: string;
  /**
   * open mode only: the desktop role's Hello token, as the agent typed it. It is kept in the
   * tab's sessionStorage with the session, so that a reload can say Hello again. Never write a
   * secret into a page; in directory and jwt modes desktops need no token.
   */
  token?: string;
  /** A WebSocket implementation (default: globalThis.WebSocket). */
  WebSocket?: WebSocketConstructor;
  /** Where the session token is kept (default: sessionStorage, or memory where there is none). */
  storage?: StorageLike;
  /** How long a request may wait for its answer before it fails (default 30 s). */
  requestTimeoutMs?: number;
  /** Longest wait between two reconnection attempts (default 10 s). */
  maxBackoffMs?: number;
}

const STORAGE_KEY = "baton.session";

interface Saved {
  url: string;
  agent: string;
  dn: string;
  session: string;
  /** open mode only: the Hello token the agent typed, so that a reload can say Hello again. */
  token?: string;
}

class MemoryStorage implements StorageLike {
  private items = new Map<string, string>();
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
  removeItem(key: string): void {
    this.items.delete(key);
  }
}

function defaultStorage(): StorageLike {
  const g = globalThis as { sessionStorage?: StorageLike };
  return g.sessionStorage ?? new MemoryStorage();
}

/**
 * The session this page (tab) had before it was reloaded, if any: log in again with the same
 * agent and DN to resume it.
 */
export function savedSession(storage: StorageLike = defaultStorage()): { url: string; agent: string; dn: string } | null {
  const text = storage.getItem(STORAGE_KEY);
  if (text === null) return null;
  try {
    const s = JSON.parse(text) as Saved;
    return { url: s.url, agent: s.agent, dn: s.dn };
  } catch {
    return null;
  }
}

/** Connects, logs in (resuming this tab's session if it has one) and returns the desk. */
export async function connect(options: ConnectOptions): Promise<Desk> {
  const desk = new Desk(options);
  await desk.start();
  return desk;
}

interface Pending {
  resolve: (m: DesktopMessage | DesktopMessage[]) => void;
  reject: (e: Error) => void;
  /** ChainedRecords: frames collected until the end frame. */
  collected?: ChainedRecord[];
  timer: ReturnType<typeof setTimeout>;
}

type Listener<T> = (event: T) => void;

/** One agent logged in on one DN, kept logged in across drops and reloads. */
export class Desk {
  /** Calls on the DN, by call id. */
  readonly calls = new Map<string, CallState>();
  /** Records this agent holds or held in this session, by record handle. */
  readonly records = new Map<string, RecordState>();
  state: ConnectionState = "connecting";
  /** The server's heartbeat period, from Welcome. */
  heartbeatMs = 5000;

  private readonly opts: ConnectOptions;
  private readonly storage: StorageLike;
  private readonly WS: WebSocketConstructor;
  private socket: WebSocketLike | null = null;
  private nextRef = 1;
  private pending = new Map<number, Pending>();
  private listeners = new Map<keyof DeskEvents, Set<Listener<never>>>();
  private session: string | null = null;
  private token: string | undefined;
  private heartbeat: ReturnType<typeof setInterval> | null = null;
  private lastReceived = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private attempt = 0;
  private ended = false;
  /** `url`, then the other nodes of a cluster. */
  private readonly urls: string[];
  /** Which of `urls` the next connection tries. */
  private urlIndex = 0;
  /** Where a standby said the active node is: the next connection goes there first. */
  private redirect: string | null = null;

  constructor(options: ConnectOptions) {
    this.opts = options;
    this.storage = options.storage ?? defaultStorage();
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (WS === undefined) {
      throw new Error("no WebSocket implementation: pass one as options.WebSocket");
    }
    this.WS = WS;
    this.urls = [options.url, ...(options.nodes ?? []).filter((u) => u !== options.url)];
    this.token = options.token;
    const saved = this.storage.getItem(STORAGE_KEY);
    if (saved !== null) {
      try {
        const s = JSON.parse(saved) as Saved;
        if (s.url === options.url && s.agent === options.agent && s.dn === options.dn) {
          this.session = s.session;
          this.token ??= s.token;
        }
      } catch {
        this.storage.removeItem(STORAGE_KEY);
      }
    }
  }

  get agent(): string {
    return this.opts.agent;
  }
  get dn(): string {
    return this.opts.dn;
  }

  /** Subscribes to an event; returns the function that unsubscribes. */
  on<K extends keyof DeskEvents>(name: K, fn: Listener<DeskEvents[K]>): () => void {
    let set = this.listeners.get(name);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(name, set);
    }
    set.add(fn as Listener<never>);
    return () => {
      set.delete(fn as Listener<never>);
    };
  }

  private emit<K extends keyof DeskEvents>(name: K, event: DeskEvents[K]): void {
    for (const fn of this.listeners.get(name) ?? []) {
      try {
        (fn as Listener<DeskEvents[K]>)(event);
      } catch (e) {
        console.error(`baton: a "${name}" listener threw`, e);
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Requests
  // -------------------------------------------------------------------------------------------

  /** Reads a record (full or read_only access). */
  getRecord(record: string): Promise<RecordMessage> {
    return this.request({ type: "GetRecord", record }) as Promise<RecordMessage>;
  }

  /** Changes the record's call result and fields (full access). */
  async updateRecord(
    record: string,
    change: { call_result?: string; fields?: Json },
  ): Promise<RecordUpdated> {
    const reply = (await this.request({ type: "UpdateRecord", record, ...change })) as RecordUpdated;
    const r = this.records.get(record);
    if (r !== undefined) {
      r.version = reply.version;
      applyChange(r.context, change);
      this.emit("change", undefined);
    }
    return reply;
  }

  /** Finishes the record (full access); the first one wins. */
  async recordProcessed(
    record: string,
    change: { call_result?: string; fields?: Json } = {},
  ): Promise<RecordProcessedAck> {
    const reply = await this.request({ type: "RecordProcessed", record, ...change });
    this.finishedByMe(record, "processed");
    return reply as RecordProcessedAck;
  }

  /** The other records of the record's chain. */
  chainedRecords(record: string): Promise<ChainedRecord[]> {
    return this.request({ type: "ChainedRecords", record }) as Promise<ChainedRecord[]>;
  }

  async recordReject(record: string): Promise<RecordRejected> {
    const reply = await this.request({ type: "RecordReject", record });
    this.finishedByMe(record, "rejected");
    return reply as RecordRejected;
  }

  async recordCancel(record: string): Promise<RecordCancelled> {
    const reply = await this.request({ type: "RecordCancel", record });
    this.finishedByMe(record, "cancelled");
    return reply as RecordCancelled;
  }

  async doNotCall(record: string, scope: DncScope = "record"): Promise<DoNotCallAck> {
    const reply = await this.request({ type: "DoNotCall", record, scope });
    this.finishedByMe(record, "do_not_call");
    return reply as DoNotCallAck;
  }

  /** Asks for a callback at `at` (in the future), to this agent or to the campaign. */
  async reschedule(
    record: string,
    at: Date | string,
    callback: Callback = "personal",
  ): Promise<Rescheduled> {
    const when = at instanceof Date ? at.toISOString() : at;
    const reply = await this.request({ type: "Reschedule", record, at: when, callback });
    this.finishedByMe(record, "rescheduled");
    return reply as Rescheduled;
  }

  /**
   * Logs out. With records still held `full` the answer is LogoutPending, and the `loggedOut`
   * event comes when the last of them is final; `force` returns them to the dialer instead.
   */
  async logout(force = false): Promise<LoggedOut | LogoutPending> {
    const reply = (await this.request({ type: "Logout", force })) as LoggedOut | LogoutPending;
    if (reply.type === "LoggedOut") this.endSession(reply);
    return reply;
  }

  /** Closes the connection without logging out: the session can be resumed (page reload). */
  close(): void {
    this.ended = true;
    this.stopTimers();
    this.setState("closed");
    this.socket?.close(1000, "closed by the desktop");
    this.failPending();
  }

  /** Sends one request and settles with its answer. */
  private request(body: Json): Promise<DesktopMessage | DesktopMessage[]> {
    return new Promise((resolve, reject) => {
      const socket = this.socket;
      if (this.state !== "open" || socket === null) {
        reject(new ConnectionLostError(`not connected (${this.state})`));
        return;
      }
      const ref = this.nextRef++;
      const timeoutMs = this.opts.requestTimeoutMs ?? 30_000;
      const timer = setTimeout(() => {
        if (this.pending.delete(ref)) {
          reject(new ConnectionLostError(`no answer to ${String(body["type"])} within ${timeoutMs} ms`));
          // A server that does not answer is as good as gone: start over.
          socket.close(4000, "request timed out");
        }
      }, timeoutMs);
      const entry: Pending = { resolve, reject, timer };
      if (body["type"] === "ChainedRecords") entry.collected = [];
      this.pending.set(ref, entry);
      socket.send(JSON.stringify({ ...body, ref }));
    });
  }

  private finishedByMe(record: string, outcome: Outcome): void {
    const r = this.records.get(record);
    if (r === undefined) return;
    r.access = "revoked";
    r.final = { outcome, by: this.opts.agent };
    this.emit("change", undefined);
  }

  // -------------------------------------------------------------------------------------------
  // The connection
  // -------------------------------------------------------------------------------------------

  /**
   * Opens the first connection and logs in; rejects if that fails. In a cluster it goes round the
   * nodes (following a standby's pointer to the active node) three times before giving up.
   */
  async start(): Promise<void> {
    const tries = this.urls.length > 1 ? 3 * this.urls.length : 1;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.open();
        return;
      } catch (e) {
        const moveOn = e instanceof ConnectionLostError || (e instanceof BatonError && e.code === "not_active");
        if (!moveOn || attempt >= tries + (this.redirect !== null ? 1 : 0)) {
          this.ended = true;
          this.setState("closed");
          throw e;
        }
        if (this.redirect === null) await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  /** The endpoint the next connection tries: where a standby pointed, or the next node. */
  private nextUrl(): string {
    if (this.redirect !== null) {
      const url = this.redirect;
      this.redirect = null;
      return url;
    }
    return this.urls[this.urlIndex % this.urls.length] as string;
  }

  /** A connection to `url` did not get a session: note where to go next. */
  private passOver(url: string, active?: string): void {
    if (active !== undefined) {
      // The active node's HTTP address, with this endpoint's scheme and path.
      const next = new URL(url);
      next.host = active;
      this.redirect = next.toString();
    } else {
      this.urlIndex++;
    }
  }

  /** One connection: WebSocket, Hello, Login. Resolves once logged in. */
  private open(): Promise<void> {
    return new Promise((resolve, reject) => {
      let loggedIn = false;
      let passedOver = false;
      let socket: WebSocketLike;
      const url = this.nextUrl();
      try {
        socket = new this.WS(url);
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      this.socket = socket;
      const handshake = (frame: DesktopMessage): void => {
        if (frame.type === "Welcome") {
          this.heartbeatMs = frame.heartbeat_ms;
          socket.send(JSON.stringify(this.loginFrame()));
        } else if (frame.type === "LoggedIn") {
          loggedIn = true;
          this.loggedIn(frame);
          resolve();
        } else if (frame.type === "Error" && frame.code === "auth_failed" && this.session !== null && this.hasCredential()) {
          // The stored session is gone (grace expired): log in afresh with the credential.
          this.forgetSession();
          socket.send(JSON.stringify(this.loginFrame()));
        } else if (frame.type === "Error" && frame.code === "not_active") {
          // A standby of a cluster: go to the active node it names, or to the next node.
          passedOver = true;
          this.passOver(url, frame.active);
          // Done with this socket now (not at its close), so the next connection may start.
          this.socket = null;
          reject(new BatonError(frame));
          socket.close(1000, "standby");
        } else if (frame.type === "Error") {
          if (frame.code === "auth_failed" && this.session !== null) this.forgetSession();
          reject(new BatonError(frame));
          socket.close(1000, "login refused");
        }
      };
      socket.onopen = () => {
        const hello: Json = { type: "Hello", ref: 0, protocol: 1, role: "desktop" };
        if (this.token !== undefined) hello["token"] = this.token;
        socket.send(JSON.stringify(hello));
      };
      socket.onmessage = (ev) => {
        if (socket !== this.socket) return;
        this.lastReceived = Date.now();
        let frame: DesktopMessage;
        try {
          frame = decodeDesktopFrame(typeof ev.data === "string" ? ev.data : String(ev.data));
        } catch (e) {
          console.warn("baton: ignored a frame:", e);
          return;
        }
        if (!loggedIn) {
          handshake(frame);
          return;
        }
        this.receive(frame);
      };
      socket.onerror = () => {
        // onclose follows and decides.
      };
      socket.onclose = (ev) => {
        if (socket !== this.socket) return;
        this.socket = null;
        this.stopTimers();
        this.failPending();
        if (!loggedIn) {
          if (!passedOver) this.passOver(url);
          reject(new ConnectionLostError(`connection closed before login (${ev.code} ${ev.reason})`));
          return;
        }
        if (!this.ended) this.reconnect();
      };
    });
  }

  private hasCredential(): boolean {
    return this.opts.password !== undefined || this.opts.jwt !== undefined || this.token !== undefined;
  }

  private loginFrame(): Json {
    const login: Json = { type: "Login", ref: 0, agent: this.opts.agent, dn: this.opts.dn };
    if (this.session !== null) {
      login["resume"] = this.session;
    } else {
      if (this.opts.password !== undefined) login["password"] = this.opts.password;
      if (this.opts.jwt !== undefined) login["jwt"] = this.opts.jwt;
    }
    return login;
  }

  private forgetSession(): void {
    this.session = null;
    this.storage.removeItem(STORAGE_KEY);
  }

  private loggedIn(frame: LoggedIn): void {
    this.session = frame.session;
    const saved: Saved = { url: this.opts.url, agent: frame.agent, dn: frame.dn, session: frame.session };
    if (this.token !== undefined) saved.token = this.token;
    this.storage.setItem(STORAGE_KEY, JSON.stringify(saved));
    // The replay that follows tells the calls present now; a fresh session starts empty.
    this.calls.clear();
    if (!frame.resumed) this.records.clear();
    this.attempt = 0;
    this.setState("open");
    this.startHeartbeat();
    this.emit("session", frame);
    this.emit("change", undefined);
  }

  private reconnect(immediate = false): void {
    this.setState("reconnecting");
    const max = this.opts.maxBackoffMs ?? 10_000;
    const base = Math.min(max, 250 * 2 ** Math.min(this.attempt, 10));
    const delay = immediate ? 0 : base / 2 + Math.random() * (base / 2);
    this.attempt++;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this.ended) return;
      this.open().catch((e: unknown) => {
        if (e instanceof BatonError && e.code === "not_active") {
          // A standby: straight to the active node it named, or on round the nodes.
          if (!this.ended && this.socket === null) this.reconnect(this.redirect !== null);
        } else if (e instanceof BatonError) {
          // Refused for good (a password changed, the session expired with no credential).
          this.ended = true;
          this.setState("closed");
          this.emit("loggedOut", { type: "LoggedOut", cause: "server" });
        } else if (!this.ended && this.socket === null) {
          this.reconnect();
        }
      });
    }, delay);
  }

  private startHeartbeat(): void {
    this.stopTimers();
    this.lastReceived = Date.now();
    this.heartbeat = setInterval(() => {
      const socket = this.socket;
      if (socket === null) return;
      if (Date.now() - this.lastReceived > 3 * this.heartbeatMs) {
        // Nothing, not even a Pong, for three periods: the connection is dead.
        socket.close(4001, "no answer from the server");
        return;
      }
      socket.send(JSON.stringify({ type: "Ping", ref: this.nextRef++ }));
    }, this.heartbeatMs);
  }

  private stopTimers(): void {
    if (this.heartbeat !== null) clearInterval(this.heartbeat);
    this.heartbeat = null;
    if (this.reconnectTimer !== null && this.ended) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
    }
  }

  private failPending(): void {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(new ConnectionLostError("the connection was lost before the answer came"));
    }
  }

  private setState(state: ConnectionState): void {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  private endSession(frame: LoggedOut): void {
    this.ended = true;
    this.forgetSession();
    this.stopTimers();
    this.setState("closed");
    this.emit("loggedOut", frame);
    this.socket?.close(1000, "logged out");
  }

  // -------------------------------------------------------------------------------------------
  // Frames
  // -------------------------------------------------------------------------------------------

  private receive(frame: DesktopMessage): void {
    this.emit("frame", frame);
    const ref = "ref" in frame ? frame.ref : undefined;
    if (ref !== undefined) {
      this.answer(ref, frame);
      return;
    }
    this.push(frame);
  }

  private answer(ref: number, frame: DesktopMessage): void {
    const p = this.pending.get(ref);
    if (p === undefined) return; // a Pong, or an answer that came after its timeout
    if (frame.type === "ChainedRecord" && p.collected !== undefined) {
      p.collected.push(frame);
      return;
    }
    this.pending.delete(ref);
    clearTimeout(p.timer);
    if (frame.type === "Error") p.reject(new BatonError(frame));
    else if (frame.type === "ChainedRecordsEnd") p.resolve(p.collected ?? []);
    else p.resolve(frame);
  }

  private push(frame: DesktopMessage): void {
    switch (frame.type) {
      case "AccessChanged":
        return this.accessChanged(frame);
      case "RecordChanged": {
        const r = this.records.get(frame.record);
        if (r === undefined) return;
        r.version = frame.version;
        applyChange(r.context, frame);
        this.emit("record", { record: r, push: frame });
        break;
      }
      case "RecordFinalized": {
        const r = this.records.get(frame.record);
        if (r === undefined) return;
        r.access = "revoked";
        r.final = { outcome: frame.outcome, by: frame.by };
        this.emit("final", { record: r, push: frame });
        break;
      }
      case "CallAlerting":
      case "CallEstablished": {
        const known = this.calls.get(frame.call);
        const call: CallState = known ?? { call: frame.call, dn: frame.dn, state: "alerting" };
        call.state = frame.type === "CallAlerting" && known?.state !== "established" ? "alerting" : "established";
        if (frame.type === "CallAlerting") {
          if (frame.record !== undefined) call.record = frame.record;
          if (frame.consult_of !== undefined) call.consultOf = frame.consult_of;
        }
        this.calls.set(frame.call, call);
        this.emit("call", { call, push: frame });
        break;
      }
      case "CallCleared":
        this.calls.delete(frame.call);
        this.emit("call", { call: undefined, push: frame });
        break;
      case "LoggedOut":
        this.endSession(frame);
        return;
      default:
        return;
    }
    this.emit("change", undefined);
  }

  private accessChanged(frame: AccessChanged): void {
    const known = this.records.get(frame.record);
    if (frame.access === "revoked") {
      // Idempotent: a replayed revocation of a record already revoked here changes nothing.
      if (known === undefined || known.access === "revoked") {
        if (known === undefined) {
          this.records.set(frame.record, {
            record: frame.record,
            access: "revoked",
            call: frame.call,
            data: {},
            context: { fields: {} },
          });
          this.emit("change", undefined);
        }
        return;
      }
      known.access = "revoked";
      this.emit("access", { record: known, push: frame });
      this.emit("change", undefined);
      return;
    }
    const record: RecordState = {
      record: frame.record,
      access: frame.access,
      call: frame.call,
      data: frame.data ?? known?.data ?? {},
      context: frame.context ?? known?.context ?? { fields: {} },
    };
    if (known?.version !== undefined) record.version = known.version;
    const changed = known === undefined || known.access !== frame.access || frame.cause !== "resume";
    this.records.set(frame.record, record);
    if (changed) this.emit("access", { record, push: frame });
    this.emit("change", undefined);
  }
}

function applyChange(context: Context, change: { call_result?: string; fields?: Json }): void {
  if (change.call_result !== undefined) context.call_result = change.call_result;
  if (change.fields !== undefined) Object.assign(context.fields, change.fields);
}
