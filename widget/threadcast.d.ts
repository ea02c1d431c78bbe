// Types for threadcast.js, the browser client of a threadcast broadcaster.

/** A row of the reply table, as the stream sends it in an `event: reply`. */
export interface Reply {
  id: string
  feedback_id: string
  author_type: 'agency' | 'end_user' | (string & {})
  author_name: string | null
  content: string
  created_at: string
  /** The thread's sequence number of the row's latest change (equal to the event's `id:`). */
  thread_seq: number
  [column: string]: unknown
}

export type Status = 'connecting' | 'live' | 'reconnecting' | 'unauthorized'

/** A token source: called on the first connect, on every reconnect and before expiry. */
export type GetToken = () => string | null | undefined | Promise<string | null | undefined>

/** The part of the browser's EventSource that the client uses (for tests and polyfills). */
export interface EventSourceLike {
  readonly readyState: number
  onopen: ((ev: any) => any) | null
  onerror: ((ev: any) => any) | null
  addEventListener(type: string, listener: (ev: { data: string; lastEventId: string }) => any): void
  close(): void
}

export interface SubscribeOptions {
  /** Origin (and path prefix) of the broadcaster, e.g. `https://rt.example.com`; `''` for the page's own origin. */
  baseUrl?: string
  /** The thread to follow: the token must be minted for the same `feedback_id`. */
  feedbackId: string
  /** Returns a fresh JWT for this thread; may be async. Throwing or returning nothing means `unauthorized`. */
  getToken: GetToken
  /** A reply arrived, new (`previous` undefined) or replacing its earlier version. */
  onReply?: (reply: Reply, previous: Reply | undefined) => void
  /** A reply was deleted; `previous` is undefined if the client never held it. */
  onDelete?: (id: string, previous: Reply | undefined) => void
  /** The thread was reset (its table truncated): every earlier reply is gone, and the list is empty. */
  onReset?: () => void
  /** The ordered list changed (after any onReply, and after a delete or reset that removed something). */
  onChange?: (replies: Reply[]) => void
  /** The connection status changed. */
  onStatus?: (status: Status) => void
  /**
   * What a first connect loads before going live: by default the whole thread (`lastEventId=0`);
   * a number N asks for the last N replies (`history=N`); 0 for live changes only. Later
   * reconnects always resume after the last seq held.
   */
  history?: number
  /** Replies the page already has (e.g. server-rendered): the first connect resumes after the highest `thread_seq`. */
  initial?: Reply[]
  /** EventSource constructor to use; defaults to `globalThis.EventSource`. */
  EventSource?: new (url: string) => EventSourceLike
  /** Reconnect backoff, in ms: doubles from `retryMin` (default 1000) up to `retryMax` (default 30000), jittered. */
  retryMin?: number
  retryMax?: number
  /** Consecutive errors while the browser retries by itself before the client takes over (default 3). */
  maxErrors?: number
}

export interface Subscription {
  /** Closes the stream and cancels every timer; no callback runs afterwards. Idempotent. */
  unsubscribe(): void
  /** Reconnects now with a fresh token (e.g. after `unauthorized`, once the user has signed in again). */
  reconnect(): void
  /** The current replies, ordered by `thread_seq`, one per id. */
  replies(): Reply[]
  /** The highest sequence number seen; sent as `lastEventId` on reconnect. */
  readonly lastSeq: number
  readonly status: Status
}

export function subscribe(options: SubscribeOptions): Subscription

export interface SendOptions {
  baseUrl?: string
  getToken: GetToken
  content: string
  authorName?: string
  /** Idempotency key, which becomes the reply id; generated (UUID v4) when absent. */
  clientId?: string
  /** Retries after a network error, a 5xx or a first 401, always with the same clientId (default 3). */
  retries?: number
  retryMin?: number
  fetch?: typeof fetch
}

/** An HTTP error from `send`: `status` is 400, 401, 413, 422, 429, ...; `message` the server's `error`. */
export interface SendError extends Error {
  status: number
  clientId: string
}

/** POSTs a reply to `${baseUrl}/api/widget/replies`; resolves to the stored row (201 new, 200 repeat). */
export function send(options: SendOptions): Promise<Reply>

/** The `exp` claim (seconds since the epoch) of a JWT, decoded without verification; null if absent. */
export function tokenExpiry(token: string): number | null

export interface FollowThreadOptions {
  /** The broadcaster's origin (and path prefix); `''` for the page's own origin. */
  baseUrl?: string
  /** The thread to follow. */
  feedbackId: string
  /** A token for the dashboard stream: one scoped to this thread, or to its project(s). */
  getToken: GetToken
  /**
   * Names the token's scope: follows with the same `baseUrl` and `scope` share one connection
   * (and the token of the latest `getToken`). Default `''`.
   */
  scope?: string
  onReply?: (reply: Reply, previous: Reply | undefined) => void
  onDelete?: (id: string, previous: Reply | undefined) => void
  onReset?: () => void
  onChange?: (replies: Reply[]) => void
  /** `forbidden`: the token does not cover the thread (or no longer does). */
  onStatus?: (status: Status | 'forbidden') => void
  EventSource?: new (url: string) => EventSourceLike
  fetch?: typeof fetch
  retryMin?: number
  retryMax?: number
  maxErrors?: number
}

export interface ThreadFollow {
  /** Ends this follow; the page's last one closes the shared connection. Idempotent. */
  unsubscribe(): void
  /** Reconnects the shared connection now with a fresh token. */
  reconnect(): void
  replies(): Reply[]
  readonly lastSeq: number
  readonly status: Status | 'forbidden'
}

/**
 * Follows one thread over the page's shared dashboard connection
 * (`GET /api/dashboard/stream`, changed by `POST /api/dashboard/stream/{id}`): one connection
 * per base URL and scope, however many threads, opened with the first follow and closed with
 * the last.
 */
export function followThread(options: FollowThreadOptions): ThreadFollow

export interface FollowProjectOptions {
  baseUrl?: string
  /** The project to follow whole: every thread of it, threads new to it included. */
  projectId: string
  /** A token scoped to the project (`{"projects": [...]}`). */
  getToken: GetToken
  scope?: string
  /** Each callback gets the thread it concerns as its last argument. */
  onReply?: (reply: Reply, previous: Reply | undefined, thread: string) => void
  onDelete?: (id: string, previous: Reply | undefined, thread: string) => void
  onReset?: (thread: string) => void
  onChange?: (replies: Reply[], thread: string) => void
  onStatus?: (status: Status | 'forbidden') => void
  EventSource?: new (url: string) => EventSourceLike
  fetch?: typeof fetch
  retryMin?: number
  retryMax?: number
  maxErrors?: number
}

export interface ProjectFollow {
  unsubscribe(): void
  reconnect(): void
  /** The replies of one of the project's threads, as the inbox holds them. */
  replies(thread: string): Reply[]
  readonly status: Status | 'forbidden'
}

/**
 * Follows a whole project (an inbox) over a dashboard stream: live from now, threads new to the
 * project from their first change; after a reconnect, every thread it knew resumes after its
 * last seq and any other comes whole. One connection per base URL, scope and project.
 */
export function followProject(options: FollowProjectOptions): ProjectFollow

/** How many dashboard connections this page holds open. */
export function dashboardConnections(): number
