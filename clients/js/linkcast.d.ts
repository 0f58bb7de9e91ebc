// Types of linkcast.js (the linkcast browser and Node client). docs/protocol.md "Client libraries".

/** A room epoch: 16 lowercase hex digits, always a string (u64 does not fit a JS number). */
export type Epoch = string;

/** Anything with the browser WebSocket's shape: the browser's own, or the `ws` package in Node. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly url: string;
  onopen: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** The hub's base URL (`https://hub.example:7070`); default `location.origin` in a browser. */
  url?: string;
  /** Connect to this Link URL directly instead of locating (tests, single-Link setups). */
  wsUrl?: string;
  /** The room to locate; default the first room joined (other than `all` / `user:*`). */
  room?: string;
  /** Called before every connect and for every `refresh`; returns the JWT (none: dev mode). */
  getToken?: () => string | Promise<string>;
  /** The WebSocket constructor; default `globalThis.WebSocket` (Node 20: pass `ws`). */
  WebSocket?: WebSocketConstructor;
  /** Default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** First reconnect delay before jitter, ms (default 100); doubled per failed attempt. */
  initialBackoffMs?: number;
  /** Largest backoff before jitter, ms (default 30000). */
  maxBackoffMs?: number;
  /** Least delay after close 1012/1013 or a locate 503/429, ms (default 1000). */
  overloadMinMs?: number;
  /** A connection that lived this long resets the attempt counter, ms (default 10000). */
  stableAfterMs?: number;
  /** Bound on opening one socket, ms (default 5000). */
  connectTimeoutMs?: number;
  /** Application ping period, ms (default 25000; 0 = off). Two silent periods close the socket. */
  pingIntervalMs?: number;
  /** Publishes waiting for a connection before `publish` rejects (default 1024). */
  maxQueuedPublishes?: number;
  /** Times one refused (503 + hint) join or publish is sent again (default 10). */
  maxRetries?: number;
  /** A publish unacked this long after its first send is not resent after a reconnect but
   *  rejected as in doubt (keep below the hub's `dedupe_secs`), ms (default 240000). */
  publishResendMs?: number;
  /** Track the Link's own rooms `all` and `user:{sub}` (dedupe, resume); default true. */
  autoRooms?: boolean;
  /** Jitter source in [0, 1); default Math.random. */
  random?: () => number;
}

export interface JoinOptions {
  /** Last seq already seen: the messages after it are replayed first. */
  since?: number | null;
  /** The epoch `since` belongs to. */
  epoch?: Epoch | null;
  /** Also get member joined/left events. */
  presence?: boolean;
}

export interface Message { room: string; seq: number; from: string; ts: number; data: unknown }
export interface Ack { room: string; seq: number; epoch: Epoch; id: string | number }
export interface Gap { room: string; firstLost: number; lastLost: number; resumeFrom: number }
export interface Reset { room: string; epoch: Epoch; lastSeq: number }
export interface Joined { room: string; epoch: Epoch; lastSeq: number }
export interface Presence { room: string; members: number; events: boolean }
export interface Member { room: string; user: string; joined: boolean }
export interface Removed { room: string; reason: string }
export interface Cause { code: number; reason: string; hintMs?: number | null; overload?: boolean; retryAfterMs?: number }
export interface Reconnecting { attempt: number; delay: number; cause: Cause }
export interface Connected { attempt: number; link: { id: number | null; ws: string } }
export interface Closed { code: number; reason: string; final: true; byClient?: boolean; error?: LinkcastError }
export type State = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface Events {
  message: Message;
  gap: Gap;
  reset: Reset;
  joined: Joined;
  left: { room: string };
  presence: Presence;
  member: Member;
  removed: Removed;
  published: Ack;
  refreshed: { exp: number };
  retrying: { room: string; delay: number; error: LinkcastError };
  error: LinkcastError;
  connected: Connected;
  reconnecting: Reconnecting;
  closed: Closed;
  state: { state: State } & Record<string, unknown>;
}

export class LinkcastError extends Error {
  /** The server's HTTP-like code (401, 403, 503…); 0 = no answer (connection lost, closed). */
  code: number;
  reason: string;
  room?: string;
  id?: string | number;
  retryAfterMs?: number;
}

export class LinkcastClient {
  constructor(options?: ClientOptions);
  readonly state: State;
  /** The live socket, or null. */
  readonly socket: WebSocketLike | null;
  readonly link: { id: number | null; ws: string } | null;
  readonly closeInfo: Closed | null;
  readonly stats: { duplicates: number; lost: number; gaps: number; resets: number; retries: number; connects: number; disconnects: number };
  on<K extends keyof Events>(type: K, fn: (value: Events[K]) => void): () => void;
  off<K extends keyof Events>(type: K, fn: (value: Events[K]) => void): void;
  /** Starts the session; resolves when a socket is open, rejects if the session ends first. */
  connect(): Promise<void>;
  join(room: string, options?: JoinOptions): void;
  leave(room: string): void;
  /** Resolves with the server's ack; rejects with a LinkcastError. */
  publish(room: string, data: unknown, options?: { id?: string | number }): Promise<Ack>;
  position(room: string): { epoch: Epoch | null; seq: number | null } | null;
  rooms(): string[];
  ping(): void;
  refresh(): Promise<void>;
  close(reason?: string): void;
  /** Feeds one server message as if the socket had received it (tests, custom transports). */
  handleServerText(text: string): void;
}

export function createClient(options?: ClientOptions): LinkcastClient;
/** `retry_after_ms=N` in a close reason, or null. */
export function retryHint(reason: string): number | null;
/** What a close means: "final" (no reconnect), "hint" (after the server's delay), "backoff". */
export function closeKind(code: number, reason: string): "final" | "hint" | "backoff";
export default LinkcastClient;
