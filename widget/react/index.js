// threadcast for React: `useThreadReplies(feedbackId, options)`, one thread's live replies in a
// component. Every component of a page that uses it with the same base URL and scope shares one
// connection to the broadcaster (threadcast.js's `followThread`), opened with the first and
// closed with the last. See ../README.md ("React") and index.d.ts.
import { useEffect, useRef, useState } from 'react'
import { followThread } from '../threadcast.js'

const EMPTY = []

export function useThreadReplies(feedbackId, options = {}) {
  const { baseUrl = '', scope = '' } = options
  // The latest options, without following again when only a callback's identity changed.
  const latest = useRef(options)
  latest.current = options
  const [state, setState] = useState({ feedbackId, replies: EMPTY, status: 'connecting' })

  useEffect(() => {
    if (!feedbackId) return
    let active = true
    const sub = followThread({
      baseUrl,
      scope,
      feedbackId,
      getToken: () => latest.current.getToken(),
      EventSource: latest.current.EventSource,
      fetch: latest.current.fetch,
      onChange: (replies) => active && setState((s) => ({ ...s, feedbackId, replies })),
      onStatus: (status) => active && setState((s) => ({ ...s, feedbackId, status })),
    })
    // A thread that another component already follows arrives with its replies at once.
    setState({ feedbackId, replies: sub.replies(), status: sub.status })
    // Cleanup: the subscription ends, and with the page's last one the connection closes.
    // (StrictMode's mount, unmount and mount again keep the one connection.)
    return () => {
      active = false
      sub.unsubscribe()
    }
  }, [feedbackId, baseUrl, scope])

  // Right after feedbackId changed, before the effect has run: nothing of the old thread.
  if (state.feedbackId !== feedbackId) return { replies: EMPTY, status: 'connecting' }
  return { replies: state.replies, status: state.status }
}
