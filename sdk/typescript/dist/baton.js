// Baton desktop SDK: a browser (or Node 20+) agent desktop over Baton's WebSocket endpoint.
//
// One module, no dependencies. `connect()` opens the WebSocket, says Hello, logs the agent in and
// keeps the session: heartbeats, reconnection with backoff, and resumption with the session token
// (kept in sessionStorage, so a page reload resumes too). Every request returns a Promise that
// always settles: with the reply, a BatonError carrying the server's code, or a
// ConnectionLostError. A small live model (calls on the DN, records with their access, data and
// context) follows every push. The wire protocol is protocol/PROTOCOL.md; the message types below
// follow protocol/schema/baton.schema.json.
const FIELDS = {
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
export const DESKTOP_MESSAGE_TYPES = Object.keys(FIELDS);
function kindOf(v) {
    if (v === null)
        return "null";
    if (Array.isArray(v))
        return "array";
    const t = typeof v;
    return t === "string" || t === "number" || t === "boolean" || t === "object" ? t : "other";
}
/** A frame that is not a message this SDK knows, or lacks a field it must have. */
export class ProtocolError extends Error {
    name = "ProtocolError";
}
/** Decodes one frame a desktop receives; throws ProtocolError for anything else. */
export function decodeDesktopFrame(text) {
    let value;
    try {
        value = JSON.parse(text);
    }
    catch {
        throw new ProtocolError("the frame is not JSON");
    }
    if (kindOf(value) !== "object")
        throw new ProtocolError("the frame is not a JSON object");
    const frame = value;
    const type = frame["type"];
    if (typeof type !== "string" || !(type in FIELDS)) {
        throw new ProtocolError(`unknown message type ${JSON.stringify(type)}`);
    }
    if (frame["ref"] !== undefined && typeof frame["ref"] !== "number") {
        throw new ProtocolError(`${type}: ref is not a number`);
    }
    for (const [field, spec] of Object.entries(FIELDS[type])) {
        const optional = spec.endsWith("?");
        const kinds = spec.replace("?", "").split("|");
        const v = frame[field];
        if (v === undefined) {
            if (optional)
                continue;
            throw new ProtocolError(`${type}: missing field ${field}`);
        }
        if (!kinds.includes(kindOf(v))) {
            throw new ProtocolError(`${type}: field ${field} is not ${kinds.join(" or ")}`);
        }
    }
    return frame;
}
// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------
/** The server refused a request; `code` says why (PROTOCOL.md section 9). */
export class BatonError extends Error {
    name = "BatonError";
    code;
    /** With access_denied: the agent's access, and who holds the record now. */
    access;
    holders;
    /** With already_final: how the record ended, and who ended it. */
    outcome;
    by;
    /** With auth_failed while logins are throttled: how long to wait. */
    retryAfterMs;
    /** With not_active: where the cluster's active node is. */
    active;
    constructor(frame) {
        super(frame.message);
        this.code = frame.code;
        if (frame.access !== undefined)
            this.access = frame.access;
        if (frame.holders !== undefined)
            this.holders = frame.holders;
        if (frame.outcome !== undefined)
            this.outcome = frame.outcome;
        if (frame.by !== undefined)
            this.by = frame.by;
        if (frame.retry_after_ms !== undefined)
            this.retryAfterMs = frame.retry_after_ms;
        if (frame.active !== undefined)
            this.active = frame.active;
    }
}
/**
 * The connection ended before the answer came. The request may or may not have been applied:
 * after the SDK has resumed the session, look at the model (or ask again with a read).
 */
export class ConnectionLostError extends Error {
    name = "ConnectionLostError";
    code = "connection_lost";
}
const STORAGE_KEY = "baton.session";
class MemoryStorage {
    items = new Map();
    getItem(key) {
        return this.items.get(key) ?? null;
    }
    setItem(key, value) {
        this.items.set(key, value);
    }
    removeItem(key) {
        this.items.delete(key);
    }
}
function defaultStorage() {
    const g = globalThis;
    return g.sessionStorage ?? new MemoryStorage();
}
/**
 * The session this page (tab) had before it was reloaded, if any: log in again with the same
 * agent and DN to resume it.
 */
export function savedSession(storage = defaultStorage()) {
    const text = storage.getItem(STORAGE_KEY);
    if (text === null)
        return null;
    try {
        const s = JSON.parse(text);
        return { url: s.url, agent: s.agent, dn: s.dn };
    }
    catch {
        return null;
    }
}
/** Connects, logs in (resuming this tab's session if it has one) and returns the desk. */
export async function connect(options) {
    const desk = new Desk(options);
    await desk.start();
    return desk;
}
/** One agent logged in on one DN, kept logged in across drops and reloads. */
export class Desk {
    /** Calls on the DN, by call id. */
    calls = new Map();
    /** Records this agent holds or held in this session, by record handle. */
    records = new Map();
    state = "connecting";
    /** The server's heartbeat period, from Welcome. */
    heartbeatMs = 5000;
    opts;
    storage;
    WS;
    socket = null;
    nextRef = 1;
    pending = new Map();
    listeners = new Map();
    session = null;
    token;
    heartbeat = null;
    lastReceived = 0;
    reconnectTimer = null;
    attempt = 0;
    ended = false;
    /** `url`, then the other nodes of a cluster. */
    urls;
    /** Which of `urls` the next connection tries. */
    urlIndex = 0;
    /** Where a standby said the active node is: the next connection goes there first. */
    redirect = null;
    constructor(options) {
        this.opts = options;
        this.storage = options.storage ?? defaultStorage();
        const WS = options.WebSocket ?? globalThis.WebSocket;
        if (WS === undefined) {
            throw new Error("no WebSocket implementation: pass one as options.WebSocket");
        }
        this.WS = WS;
        this.urls = [options.url, ...(options.nodes ?? []).filter((u) => u !== options.url)];
        this.token = options.token;
        const saved = this.storage.getItem(STORAGE_KEY);
        if (saved !== null) {
            try {
                const s = JSON.parse(saved);
                if (s.url === options.url && s.agent === options.agent && s.dn === options.dn) {
                    this.session = s.session;
                    this.token ??= s.token;
                }
            }
            catch {
                this.storage.removeItem(STORAGE_KEY);
            }
        }
    }
    get agent() {
        return this.opts.agent;
    }
    get dn() {
        return this.opts.dn;
    }
    /** Subscribes to an event; returns the function that unsubscribes. */
    on(name, fn) {
        let set = this.listeners.get(name);
        if (set === undefined) {
            set = new Set();
            this.listeners.set(name, set);
        }
        set.add(fn);
        return () => {
            set.delete(fn);
        };
    }
    emit(name, event) {
        for (const fn of this.listeners.get(name) ?? []) {
            try {
                fn(event);
            }
            catch (e) {
                console.error(`baton: a "${name}" listener threw`, e);
            }
        }
    }
    // -------------------------------------------------------------------------------------------
    // Requests
    // -------------------------------------------------------------------------------------------
    /** Reads a record (full or read_only access). */
    getRecord(record) {
        return this.request({ type: "GetRecord", record });
    }
    /** Changes the record's call result and fields (full access). */
    async updateRecord(record, change) {
        const reply = (await this.request({ type: "UpdateRecord", record, ...change }));
        const r = this.records.get(record);
        if (r !== undefined) {
            r.version = reply.version;
            applyChange(r.context, change);
            this.emit("change", undefined);
        }
        return reply;
    }
    /** Finishes the record (full access); the first one wins. */
    async recordProcessed(record, change = {}) {
        const reply = await this.request({ type: "RecordProcessed", record, ...change });
        this.finishedByMe(record, "processed");
        return reply;
    }
    /** The other records of the record's chain. */
    chainedRecords(record) {
        return this.request({ type: "ChainedRecords", record });
    }
    async recordReject(record) {
        const reply = await this.request({ type: "RecordReject", record });
        this.finishedByMe(record, "rejected");
        return reply;
    }
    async recordCancel(record) {
        const reply = await this.request({ type: "RecordCancel", record });
        this.finishedByMe(record, "cancelled");
        return reply;
    }
    async doNotCall(record, scope = "record") {
        const reply = await this.request({ type: "DoNotCall", record, scope });
        this.finishedByMe(record, "do_not_call");
        return reply;
    }
    /** Asks for a callback at `at` (in the future), to this agent or to the campaign. */
    async reschedule(record, at, callback = "personal") {
        const when = at instanceof Date ? at.toISOString() : at;
        const reply = await this.request({ type: "Reschedule", record, at: when, callback });
        this.finishedByMe(record, "rescheduled");
        return reply;
    }
    /**
     * Logs out. With records still held `full` the answer is LogoutPending, and the `loggedOut`
     * event comes when the last of them is final; `force` returns them to the dialer instead.
     */
    async logout(force = false) {
        const reply = (await this.request({ type: "Logout", force }));
        if (reply.type === "LoggedOut")
            this.endSession(reply);
        return reply;
    }
    /** Closes the connection without logging out: the session can be resumed (page reload). */
    close() {
        this.ended = true;
        this.stopTimers();
        this.setState("closed");
        this.socket?.close(1000, "closed by the desktop");
        this.failPending();
    }
    /** Sends one request and settles with its answer. */
    request(body) {
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
            const entry = { resolve, reject, timer };
            if (body["type"] === "ChainedRecords")
                entry.collected = [];
            this.pending.set(ref, entry);
            socket.send(JSON.stringify({ ...body, ref }));
        });
    }
    finishedByMe(record, outcome) {
        const r = this.records.get(record);
        if (r === undefined)
            return;
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
    async start() {
        const tries = this.urls.length > 1 ? 3 * this.urls.length : 1;
        for (let attempt = 1;; attempt++) {
            try {
                await this.open();
                return;
            }
            catch (e) {
                const moveOn = e instanceof ConnectionLostError || (e instanceof BatonError && e.code === "not_active");
                if (!moveOn || attempt >= tries + (this.redirect !== null ? 1 : 0)) {
                    this.ended = true;
                    this.setState("closed");
                    throw e;
                }
                if (this.redirect === null)
                    await new Promise((r) => setTimeout(r, 200));
            }
        }
    }
    /** The endpoint the next connection tries: where a standby pointed, or the next node. */
    nextUrl() {
        if (this.redirect !== null) {
            const url = this.redirect;
            this.redirect = null;
            return url;
        }
        return this.urls[this.urlIndex % this.urls.length];
    }
    /** A connection to `url` did not get a session: note where to go next. */
    passOver(url, active) {
        if (active !== undefined) {
            // The active node's HTTP address, with this endpoint's scheme and path.
            const next = new URL(url);
            next.host = active;
            this.redirect = next.toString();
        }
        else {
            this.urlIndex++;
        }
    }
    /** One connection: WebSocket, Hello, Login. Resolves once logged in. */
    open() {
        return new Promise((resolve, reject) => {
            let loggedIn = false;
            let passedOver = false;
            let socket;
            const url = this.nextUrl();
            try {
                socket = new this.WS(url);
            }
            catch (e) {
                reject(e instanceof Error ? e : new Error(String(e)));
                return;
            }
            this.socket = socket;
            const handshake = (frame) => {
                if (frame.type === "Welcome") {
                    this.heartbeatMs = frame.heartbeat_ms;
                    socket.send(JSON.stringify(this.loginFrame()));
                }
                else if (frame.type === "LoggedIn") {
                    loggedIn = true;
                    this.loggedIn(frame);
                    resolve();
                }
                else if (frame.type === "Error" && frame.code === "auth_failed" && this.session !== null && this.hasCredential()) {
                    // The stored session is gone (grace expired): log in afresh with the credential.
                    this.forgetSession();
                    socket.send(JSON.stringify(this.loginFrame()));
                }
                else if (frame.type === "Error" && frame.code === "not_active") {
                    // A standby of a cluster: go to the active node it names, or to the next node.
                    passedOver = true;
                    this.passOver(url, frame.active);
                    // Done with this socket now (not at its close), so the next connection may start.
                    this.socket = null;
                    reject(new BatonError(frame));
                    socket.close(1000, "standby");
                }
                else if (frame.type === "Error") {
                    if (frame.code === "auth_failed" && this.session !== null)
                        this.forgetSession();
                    reject(new BatonError(frame));
                    socket.close(1000, "login refused");
                }
            };
            socket.onopen = () => {
                const hello = { type: "Hello", ref: 0, protocol: 1, role: "desktop" };
                if (this.token !== undefined)
                    hello["token"] = this.token;
                socket.send(JSON.stringify(hello));
            };
            socket.onmessage = (ev) => {
                if (socket !== this.socket)
                    return;
                this.lastReceived = Date.now();
                let frame;
                try {
                    frame = decodeDesktopFrame(typeof ev.data === "string" ? ev.data : String(ev.data));
                }
                catch (e) {
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
                if (socket !== this.socket)
                    return;
                this.socket = null;
                this.stopTimers();
                this.failPending();
                if (!loggedIn) {
                    if (!passedOver)
                        this.passOver(url);
                    reject(new ConnectionLostError(`connection closed before login (${ev.code} ${ev.reason})`));
                    return;
                }
                if (!this.ended)
                    this.reconnect();
            };
        });
    }
    hasCredential() {
        return this.opts.password !== undefined || this.opts.jwt !== undefined || this.token !== undefined;
    }
    loginFrame() {
        const login = { type: "Login", ref: 0, agent: this.opts.agent, dn: this.opts.dn };
        if (this.session !== null) {
            login["resume"] = this.session;
        }
        else {
            if (this.opts.password !== undefined)
                login["password"] = this.opts.password;
            if (this.opts.jwt !== undefined)
                login["jwt"] = this.opts.jwt;
        }
        return login;
    }
    forgetSession() {
        this.session = null;
        this.storage.removeItem(STORAGE_KEY);
    }
    loggedIn(frame) {
        this.session = frame.session;
        const saved = { url: this.opts.url, agent: frame.agent, dn: frame.dn, session: frame.session };
        if (this.token !== undefined)
            saved.token = this.token;
        this.storage.setItem(STORAGE_KEY, JSON.stringify(saved));
        // The replay that follows tells the calls present now; a fresh session starts empty.
        this.calls.clear();
        if (!frame.resumed)
            this.records.clear();
        this.attempt = 0;
        this.setState("open");
        this.startHeartbeat();
        this.emit("session", frame);
        this.emit("change", undefined);
    }
    reconnect(immediate = false) {
        this.setState("reconnecting");
        const max = this.opts.maxBackoffMs ?? 10_000;
        const base = Math.min(max, 250 * 2 ** Math.min(this.attempt, 10));
        const delay = immediate ? 0 : base / 2 + Math.random() * (base / 2);
        this.attempt++;
        this.reconnectTimer = setTimeout(() => {
            this.reconnectTimer = null;
            if (this.ended)
                return;
            this.open().catch((e) => {
                if (e instanceof BatonError && e.code === "not_active") {
                    // A standby: straight to the active node it named, or on round the nodes.
                    if (!this.ended && this.socket === null)
                        this.reconnect(this.redirect !== null);
                }
                else if (e instanceof BatonError) {
                    // Refused for good (a password changed, the session expired with no credential).
                    this.ended = true;
                    this.setState("closed");
                    this.emit("loggedOut", { type: "LoggedOut", cause: "server" });
                }
                else if (!this.ended && this.socket === null) {
                    this.reconnect();
                }
            });
        }, delay);
    }
    startHeartbeat() {
        this.stopTimers();
        this.lastReceived = Date.now();
        this.heartbeat = setInterval(() => {
            const socket = this.socket;
            if (socket === null)
                return;
            if (Date.now() - this.lastReceived > 3 * this.heartbeatMs) {
                // Nothing, not even a Pong, for three periods: the connection is dead.
                socket.close(4001, "no answer from the server");
                return;
            }
            socket.send(JSON.stringify({ type: "Ping", ref: this.nextRef++ }));
        }, this.heartbeatMs);
    }
    stopTimers() {
        if (this.heartbeat !== null)
            clearInterval(this.heartbeat);
        this.heartbeat = null;
        if (this.reconnectTimer !== null && this.ended) {
            clearTimeout(this.reconnectTimer);
            this.reconnectTimer = null;
        }
    }
    failPending() {
        const pending = [...this.pending.values()];
        this.pending.clear();
        for (const p of pending) {
            clearTimeout(p.timer);
            p.reject(new ConnectionLostError("the connection was lost before the answer came"));
        }
    }
    setState(state) {
        if (this.state === state)
            return;
        this.state = state;
        this.emit("state", state);
    }
    endSession(frame) {
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
    receive(frame) {
        this.emit("frame", frame);
        const ref = "ref" in frame ? frame.ref : undefined;
        if (ref !== undefined) {
            this.answer(ref, frame);
            return;
        }
        this.push(frame);
    }
    answer(ref, frame) {
        const p = this.pending.get(ref);
        if (p === undefined)
            return; // a Pong, or an answer that came after its timeout
        if (frame.type === "ChainedRecord" && p.collected !== undefined) {
            p.collected.push(frame);
            return;
        }
        this.pending.delete(ref);
        clearTimeout(p.timer);
        if (frame.type === "Error")
            p.reject(new BatonError(frame));
        else if (frame.type === "ChainedRecordsEnd")
            p.resolve(p.collected ?? []);
        else
            p.resolve(frame);
    }
    push(frame) {
        switch (frame.type) {
            case "AccessChanged":
                return this.accessChanged(frame);
            case "RecordChanged": {
                const r = this.records.get(frame.record);
                if (r === undefined)
                    return;
                r.version = frame.version;
                applyChange(r.context, frame);
                this.emit("record", { record: r, push: frame });
                break;
            }
            case "RecordFinalized": {
                const r = this.records.get(frame.record);
                if (r === undefined)
                    return;
                r.access = "revoked";
                r.final = { outcome: frame.outcome, by: frame.by };
                this.emit("final", { record: r, push: frame });
                break;
            }
            case "CallAlerting":
            case "CallEstablished": {
                const known = this.calls.get(frame.call);
                const call = known ?? { call: frame.call, dn: frame.dn, state: "alerting" };
                call.state = frame.type === "CallAlerting" && known?.state !== "established" ? "alerting" : "established";
                if (frame.type === "CallAlerting") {
                    if (frame.record !== undefined)
                        call.record = frame.record;
                    if (frame.consult_of !== undefined)
                        call.consultOf = frame.consult_of;
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
    accessChanged(frame) {
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
        const record = {
            record: frame.record,
            access: frame.access,
            call: frame.call,
            data: frame.data ?? known?.data ?? {},
            context: frame.context ?? known?.context ?? { fields: {} },
        };
        if (known?.version !== undefined)
            record.version = known.version;
        const changed = known === undefined || known.access !== frame.access || frame.cause !== "resume";
        this.records.set(frame.record, record);
        if (changed)
            this.emit("access", { record, push: frame });
        this.emit("change", undefined);
    }
}
function applyChange(context, change) {
    if (change.call_result !== undefined)
        context.call_result = change.call_result;
    if (change.fields !== undefined)
        Object.assign(context.fields, change.fields);
}
