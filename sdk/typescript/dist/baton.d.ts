export type Access = "full" | "read_only" | "revoked";
export type AccessCause = "established" | "transfer" | "consultation" | "conference" | "left" | "released" | "logout" | "admin" | "resume";
export type Outcome = "processed" | "rejected" | "cancelled" | "do_not_call" | "rescheduled" | "returned" | "stale";
/** The codes of version 1; a later server may send others, hence `string`. */
export type ErrorCode = "bad_frame" | "hello_required" | "auth_failed" | "protocol_mismatch" | "unknown_type" | "bad_request" | "wrong_role" | "not_logged_in" | "dn_in_use" | "no_such_record" | "access_denied" | "read_only" | "already_final" | "record_busy" | "overloaded" | "unavailable" | "dn_not_allowed" | "not_active" | (string & {});
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
export type DesktopMessage = Welcome | Ping | Pong | ErrorMessage | LoggedIn | LoggedOut | LogoutPending | RecordMessage | RecordUpdated | RecordProcessedAck | ChainedRecord | ChainedRecordsEnd | RecordRejected | RecordCancelled | DoNotCallAck | Rescheduled | AccessChanged | RecordChanged | RecordFinalized | CallAlerting | CallEstablished | CallCleared;
/** The type of every frame a desktop can receive. */
export declare const DESKTOP_MESSAGE_TYPES: DesktopMessage["type"][];
/** A frame that is not a message this SDK knows, or lacks a field it must have. */
export declare class ProtocolError extends Error {
    name: string;
}
/** Decodes one frame a desktop receives; throws ProtocolError for anything else. */
export declare function decodeDesktopFrame(text: string): DesktopMessage;
/** The server refused a request; `code` says why (PROTOCOL.md section 9). */
export declare class BatonError extends Error {
    name: string;
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
    constructor(frame: ErrorMessage);
}
/**
 * The connection ended before the answer came. The request may or may not have been applied:
 * after the SDK has resumed the session, look at the model (or ask again with a read).
 */
export declare class ConnectionLostError extends Error {
    name: string;
    readonly code = "connection_lost";
}
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
    final?: {
        outcome: Outcome;
        by: string;
    };
}
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";
export interface DeskEvents {
    /** The agent's access to a record changed (a replayed push that changes nothing is not told). */
    access: {
        record: RecordState;
        push: AccessChanged;
    };
    /** Another holder updated a record. */
    record: {
        record: RecordState;
        push: RecordChanged;
    };
    /** A record got its final outcome by someone else. */
    final: {
        record: RecordState;
        push: RecordFinalized;
    };
    /** A call on the DN rang, was answered, or left (then `call` is undefined). */
    call: {
        call: CallState | undefined;
        push: CallAlerting | CallEstablished | CallCleared;
    };
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
/** What the SDK needs of a WebSocket: the browser's, or one passed in (Node: the `ws` package). */
export interface WebSocketLike {
    readyState: number;
    send(data: string): void;
    close(code?: number, reason?: string): void;
    onopen: ((ev: unknown) => void) | null;
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onclose: ((ev: {
        code: number;
        reason: string;
    }) => void) | null;
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
/**
 * The session this page (tab) had before it was reloaded, if any: log in again with the same
 * agent and DN to resume it.
 */
export declare function savedSession(storage?: StorageLike): {
    url: string;
    agent: string;
    dn: string;
} | null;
/** Connects, logs in (resuming this tab's session if it has one) and returns the desk. */
export declare function connect(options: ConnectOptions): Promise<Desk>;
type Listener<T> = (event: T) => void;
/** One agent logged in on one DN, kept logged in across drops and reloads. */
export declare class Desk {
    /** Calls on the DN, by call id. */
    readonly calls: Map<string, CallState>;
    /** Records this agent holds or held in this session, by record handle. */
    readonly records: Map<string, RecordState>;
    state: ConnectionState;
    /** The server's heartbeat period, from Welcome. */
    heartbeatMs: number;
    private readonly opts;
    private readonly storage;
    private readonly WS;
    private socket;
    private nextRef;
    private pending;
    private listeners;
    private session;
    private token;
    private heartbeat;
    private lastReceived;
    private reconnectTimer;
    private attempt;
    private ended;
    /** `url`, then the other nodes of a cluster. */
    private readonly urls;
    /** Which of `urls` the next connection tries. */
    private urlIndex;
    /** Where a standby said the active node is: the next connection goes there first. */
    private redirect;
    constructor(options: ConnectOptions);
    get agent(): string;
    get dn(): string;
    /** Subscribes to an event; returns the function that unsubscribes. */
    on<K extends keyof DeskEvents>(name: K, fn: Listener<DeskEvents[K]>): () => void;
    private emit;
    /** Reads a record (full or read_only access). */
    getRecord(record: string): Promise<RecordMessage>;
    /** Changes the record's call result and fields (full access). */
    updateRecord(record: string, change: {
        call_result?: string;
        fields?: Json;
    }): Promise<RecordUpdated>;
    /** Finishes the record (full access); the first one wins. */
    recordProcessed(record: string, change?: {
        call_result?: string;
        fields?: Json;
    }): Promise<RecordProcessedAck>;
    /** The other records of the record's chain. */
    chainedRecords(record: string): Promise<ChainedRecord[]>;
    recordReject(record: string): Promise<RecordRejected>;
    recordCancel(record: string): Promise<RecordCancelled>;
    doNotCall(record: string, scope?: DncScope): Promise<DoNotCallAck>;
    /** Asks for a callback at `at` (in the future), to this agent or to the campaign. */
    reschedule(record: string, at: Date | string, callback?: Callback): Promise<Rescheduled>;
    /**
     * Logs out. With records still held `full` the answer is LogoutPending, and the `loggedOut`
     * event comes when the last of them is final; `force` returns them to the dialer instead.
     */
    logout(force?: boolean): Promise<LoggedOut | LogoutPending>;
    /** Closes the connection without logging out: the session can be resumed (page reload). */
    close(): void;
    /** Sends one request and settles with its answer. */
    private request;
    private finishedByMe;
    /**
     * Opens the first connection and logs in; rejects if that fails. In a cluster it goes round the
     * nodes (following a standby's pointer to the active node) three times before giving up.
     */
    start(): Promise<void>;
    /** The endpoint the next connection tries: where a standby pointed, or the next node. */
    private nextUrl;
    /** A connection to `url` did not get a session: note where to go next. */
    private passOver;
    /** One connection: WebSocket, Hello, Login. Resolves once logged in. */
    private open;
    private hasCredential;
    private loginFrame;
    private forgetSession;
    private loggedIn;
    private reconnect;
    private startHeartbeat;
    private stopTimers;
    private failPending;
    private setState;
    private endSession;
    private receive;
    private answer;
    private push;
    private accessChanged;
}
export {};
