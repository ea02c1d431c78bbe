// threadcast widget client: live replies of one feedback thread over Server-Sent Events.
// Zero dependencies. See README.md for the API and threadcast.d.ts for the types.

const STREAM = '/api/widget/stream'
const REPLIES = '/api/widget/replies'

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const trim = (u) => (u || '').replace(/\/+$/, '')

/** Backoff delay for attempt n: doubling from min up to max, with jitter in [d/2, d]. */
const backoff = (n, min, max) => {
  const d = Math.min(max, min * 2 ** n)
  return d / 2 + (Math.random() * d) / 2
}

/** The `exp` claim of a JWT (seconds since the epoch), read without verification; null if none. */
export function tokenExpiry(token) {
  try {
    const p = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')
    const exp = JSON.parse(atob(p)).exp
    return typeof exp == 'number' ? exp : null
  } catch {
    return null
  }
}

/** Asks getToken for a token; resolves to it, or to null when it throws or gives nothing. */
const fetchToken = async (getToken) => {
  try {
    return (await getToken()) || null
  } catch {
    return null
  }
}

export function subscribe({
  baseUrl,
  feedbackId,
  getToken,
  onReply,
  onDelete,
  onReset,
  onChange,
  onStatus,
  history,
  initial,
  EventSource: ES = globalThis.EventSource,
  retryMin = 1000,
  retryMax = 30000,
  maxErrors = 3,
}) {
  const byId = new Map()
  let lastSeq = 0
  let sorted = null // cached ordered list, dropped on every change
  let status
  let es = null
  let timer = 0
  let gen = 0 // bumped on every (re)connect and on unsubscribe; stale work checks it
  let attempt = 0 // reconnects since the last open
  let errors = 0 // error events since the last open
  let closed = false

  const setStatus = (s) => {
    if (s !== status && !closed) {
      status = s
      onStatus && onStatus(s)
    }
  }
  const changed = () => {
    sorted = null
    onChange && onChange(list())
  }
  const list = () => sorted || (sorted = [...byId.values()].sort((a, b) => a.thread_seq - b.thread_seq))

  const put = (row, seq) => {
    const r = { ...row, thread_seq: seq || row.thread_seq }
    const prev = byId.get(r.id)
    byId.set(r.id, r)
    return [r, prev]
  }
  for (const row of initial || []) {
    const [r] = put(row)
    if (r.thread_seq > lastSeq) lastSeq = r.thread_seq
  }

  const stop = () => {
    clearTimeout(timer)
    if (es) es.close()
    es = null
  }

  // Close the current stream and open a new one after `delay` ms with a fresh token.
  const restart = (delay) => {
    stop()
    const g = ++gen
    timer = setTimeout(() => g === gen && connect(g), delay)
  }

  const fail = () => {
    setStatus('reconnecting')
    restart(backoff(attempt++, retryMin, retryMax))
  }

  const handle = (g, fn) => (e) => {
    if (g !== gen || closed) return
    let data
    try {
      data = JSON.parse(e.data)
    } catch {
      return
    }
    const seq = +e.lastEventId || +data.thread_seq || 0
    if (seq && seq <= lastSeq) return // already seen: a replay after a resume
    if (seq) lastSeq = seq
    fn(data, seq)
  }

  const connect = async (g) => {
    const token = await fetchToken(getToken)
    if (g !== gen || closed) return
    if (!token) {
      stop()
      return setStatus('unauthorized')
    }
    let url = `${trim(baseUrl)}${STREAM}?feedbackId=${encodeURIComponent(feedbackId)}&token=${encodeURIComponent(token)}`
    // Resume after the last seq held. Holding none yet, take the whole thread (every change
    // after seq 0), or the last `history` replies, or (history: 0) live changes only.
    if (lastSeq || history == null) url += `&lastEventId=${lastSeq}`
    else if (history) url += `&history=${history}`
    const s = (es = new ES(url))
    s.onopen = () => {
      if (g !== gen) return
      attempt = errors = 0
      setStatus('live')
    }
    s.onerror = () => {
      if (g !== gen || closed) return
      // CLOSED (2): the server refused us (401 on an expired token, or another non-200):
      // EventSource will not retry, so we do, with a fresh token. CONNECTING (0): the browser
      // is retrying by itself with the old URL; after a few failures we take over.
      if (s.readyState === 2 || ++errors >= maxErrors) fail()
      else setStatus('reconnecting')
    }
    s.addEventListener(
      'reply',
      handle(g, (row, seq) => {
        const [r, prev] = put(row, seq)
        onReply && onReply(r, prev)
        changed()
      }),
    )
    s.addEventListener(
      'delete',
      handle(g, ({ id }) => {
        const prev = byId.get(id)
        byId.delete(id)
        onDelete && onDelete(id, prev)
        if (prev) changed()
      }),
    )
    // A live start (history: 0) says where it joined the thread: resume from there, so that a
    // drop before the first reply loses nothing committed while reconnecting.
    s.addEventListener('joined', (e) => {
      if (g === gen && +e.lastEventId > lastSeq) lastSeq = +e.lastEventId
    })
    // The table was truncated: every earlier reply of the thread is gone.
    s.addEventListener(
      'reset',
      handle(g, () => {
        const had = byId.size > 0
        byId.clear()
        onReset && onReset()
        if (had) changed()
      }),
    )
    // Refresh a little before the token expires: a new stream that resumes from lastSeq.
    const exp = tokenExpiry(token)
    if (exp) {
      const left = exp * 1000 - Date.now()
      const delay = Math.min(left - Math.min(30000, left / 5), 2 ** 31 - 1)
      if (delay > 1000) timer = setTimeout(() => g === gen && restart(0), delay)
    }
  }

  setStatus('connecting')
  connect(gen)

  return {
    unsubscribe() {
      stop()
      gen++
      closed = true
    },
    /** Reconnect now with a fresh token, e.g. after the user logs in again. */
    reconnect() {
      if (closed) return
      attempt = errors = 0
      setStatus('connecting')
      restart(0)
    },
    replies: list,
    get lastSeq() {
      return lastSeq
    },
    get status() {
      return status
    },
  }
}

/** A v4 UUID; crypto.randomUUID needs a secure context, getRandomValues does not. */
const uuid = () =>
  crypto.randomUUID
    ? crypto.randomUUID()
    : '10000000-1000-4000-8000-100000000000'.replace(/[018]/g, (c) =>
        (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16),
      )

export async function send({
  baseUrl,
  getToken,
  content,
  authorName,
  clientId = uuid(),
  retries = 3,
  retryMin = 500,
  fetch: f = globalThis.fetch,
}) {
  const body = JSON.stringify({ content, author_name: authorName, client_id: clientId })
  for (let i = 0; ; i++) {
    const token = await getToken()
    if (!token) throw Object.assign(new Error('no token'), { status: 401 })
    let res
    try {
      res = await f(trim(baseUrl) + REPLIES, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body,
      })
    } catch (e) {
      // A network error: the reply may or may not have landed. The same client_id makes the
      // retry safe: the server answers 200 with the existing row instead of inserting again.
      if (i >= retries) throw e
      await sleep(backoff(i, retryMin, 8000))
      continue
    }
    const data = await res.json().catch(() => ({}))
    if (res.ok) return data
    // Gateway trouble and a token that expired in between are worth another try; 4xx are not.
    if ((res.status >= 500 || (res.status == 401 && !i)) && i < retries) {
      await sleep(backoff(i, retryMin, 8000))
      continue
    }
    throw Object.assign(new Error(data.error || `HTTP ${res.status}`), { status: res.status, clientId })
  }
}
