// Types for threadcast's React hook.
import type { GetToken, Reply } from '../threadcast'

export type ThreadStatus = 'connecting' | 'live' | 'reconnecting' | 'unauthorized' | 'forbidden'

export interface UseThreadRepliesOptions {
  /** Returns a token for the dashboard stream: one for this thread, or for its project(s). Read at each use, so it may change identity freely. */
  getToken: GetToken
  /** The broadcaster's origin (and path prefix); `''` for the page's own origin. */
  baseUrl?: string
  /**
   * Names the token's scope. Components with the same `baseUrl` and `scope` share one
   * connection (and one token); give components whose tokens cover different threads or
   * projects different scopes. Default `''`.
   */
  scope?: string
  /** EventSource and fetch to use (tests, polyfills). */
  EventSource?: new (url: string) => any
  fetch?: typeof fetch
}

export interface ThreadReplies {
  /** The thread's replies, one per id, ordered by `thread_seq`. */
  replies: Reply[]
  /** `forbidden`: the token does not cover the thread (or no longer does). */
  status: ThreadStatus
}

/**
 * The live replies of thread `feedbackId`. Changing `feedbackId` moves the subscription on the
 * same connection; unmounting ends it; a null `feedbackId` follows nothing.
 */
export function useThreadReplies(
  feedbackId: string | null | undefined,
  options: UseThreadRepliesOptions,
): ThreadReplies
