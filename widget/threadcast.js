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

/**
 * One thread's replies: one per id, in seq order. A change at or below the last seq seen is a
 * replay (after a resume) and is ignored. Shared by `subscribe` and the dashboard connection.
 */
const thread = (cb, initial, seq0 = 0) => {
  const byId = new Map()
  let lastSeq = seq0
  let sorted = null // cached ordered list, dropped on every change
  const list = () => sorted || (sorted = [...byId.values()].sort((a, b) => a.thread_seq - b.thread_seq))
  const changed = () => {
    sorted = null
    cb.onChange && cb.onChange(list())
  }
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
  return {
    list,
    get lastSeq() {
      return lastSeq
    },
    /** Where a live start joined the thread: a resume goes on from there. */
    joined(seq) {
      if (seq > lastSeq) lastSeq = seq
    },
    /** A change as the stream tells it: `reply` (the row), `delete` ({id}) or `reset`. */
    apply(kind, data, seq) {
      if (seq && seq <= lastSeq) return
      if (seq) lastSeq = seq
      if (kind == 'reply') {
        const [r, prev] = put(data, seq)
        cb.onReply && cb.onReply(r, prev)
        changed()
      } else if (kind == 'delete') {
        const prev = byId.get(data.id)
        byId.delete(data.id)
        cb.onDelete && cb.onDelete(data.id, prev)
        if (prev) changed()
      } else {
        // The table was truncated: every earlier reply of the thread is gone.
        const had = byId.size > 0
        byId.clear()
        cb.onReset && cb.onReset()
        if (had) changed()
      }
    },
  }
}

const KINDS = ['reply', 'delete', 'reset']

/** When to refresh a token: a fifth of its time left before `exp`, at most 30 s before; 0 if never. */
const refreshIn = (token) => {
  const exp = tokenExpiry(token)
  if (!exp) return 0
  const left = exp * 1000 - Date.now()
  const delay = Math.min(left - Math.min(30000, left / 5), 2 ** 31 - 1)
  return delay > 1000 ? delay : 0
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
  let closed = false
  const live = (fn) => fn && ((...a) => !closed && fn(...a))
  const state = thread(
    { onReply: live(onReply), onDelete: live(onDelete), onReset: live(onReset), onChange: live(onChange) },
    initial,
  )
  let status
  let es = null
  let timer = 0
  let gen = 0 // bumped on every (re)connect and on unsubscribe; stale work checks it
  let attempt = 0 // reconnects since the last open
  let errors = 0 // error events since the last open

  const setStatus = (s) => {
    if (s !== status && !closed) {
      status = s
      onStatus && onStatus(s)
    }
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
    const last = state.lastSeq
    if (last || history == null) url += `&lastEventId=${last}`
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
    for (const kind of KINDS)
      s.addEventListener(kind, (e) => {
        if (g !== gen || closed) return
        let data
        try {
          data = JSON.parse(e.data)
        } catch {
          return
        }
        state.apply(kind, data, +e.lastEventId || +data.thread_seq || 0)
      })
    // A live start (history: 0) says where it joined the thread: resume from there, so that a
    // drop before the first reply loses nothing committed while reconnecting.
    s.addEventListener('joined', (e) => {
      if (g === gen) state.joined(+e.lastEventId)
    })
    // Refresh a little before the token expires: a new stream that resumes from lastSeq.
    const delay = refreshIn(token)
    if (delay) timer = setTimeout(() => g === gen && restart(0), delay)
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
    replies: state.list,
    get lastSeq() {
      return state.lastSeq
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

// ---- Dashboards: many threads over one shared connection ----------------------------------

const DASHBOARD = '/api/dashboard/stream'

/** Open dashboard connections of this page, by base URL and token scope. */
const connections = new Map()

/**
 * The shared connection for `key`: one EventSource to the dashboard stream, following every
 * thread that some subscription of this page wants, opened with the first subscription and
 * closed with the last. The set it follows changes by POST without touching the stream. With
 * `o.project`, it follows that whole project instead (an inbox), every thread of it fanned out to
 * the inbox's subscriptions.
 */
const connection = (key, o) => {
  const threads = new Map() // thread -> { subs: Set, state, status }
  const inbox = o.project ? new Set() : null // the project's subscriptions
  let project = false // the project is still to be followed on this stream
  let opened = false // a stream opened before: a new one resumes
  const added = new Set() // threads to follow at the next flush
  const removed = new Set() // threads to unfollow at the next flush
  let es = null
  let sid = null // the stream's id, from its `open` event
  let token = null
  let gen = 0
  let timer = 0
  let attempt = 0
  let errors = 0
  let queued = false
  let started = false

  const each = (t, fn) => threads.get(t) && threads.get(t).subs.forEach(fn)
  // A thread's entry: its state, fanned out to `subs` (each callback gets the thread too).
  const entry = (t, subs, seq0) => {
    const fan = (name) => (...a) => subs.forEach((s) => s.cb[name] && s.cb[name](...a, t))
    const e = { subs, status: 'connecting' }
    e.state = thread({ onReply: fan('onReply'), onDelete: fan('onDelete'), onReset: fan('onReset'), onChange: fan('onChange') }, null, seq0)
    threads.set(t, e)
    return e
  }
  const status = (s, only) => {
    for (const [t, e] of threads) if (!only || only === t) e.status = s, each(t, (sub) => sub.status(s))
  }

  const stop = () => {
    clearTimeout(timer)
    if (es) es.close()
    es = sid = null
  }

  const restart = (delay) => {
    stop()
    const g = ++gen
    timer = setTimeout(() => g === gen && connect(g), delay)
  }

  const fail = () => {
    status('reconnecting')
    restart(backoff(attempt++, o.retryMin, o.retryMax))
  }

  // POSTs the pending changes of the followed set (and renews the stream's token).
  const post = async (body) => {
    const g = gen
    const f = o.fetch // called unbound: a browser's fetch refuses any other `this`
    const res = await f(`${trim(o.baseUrl)}${DASHBOARD}/${sid}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    })
    const data = await res.json().catch(() => ({}))
    if (g !== gen) return
    if (!res.ok) throw Object.assign(new Error(data.error || `HTTP ${res.status}`), { status: res.status })
    for (const t in data.refused || {}) status('forbidden', t)
  }

  const flush = () => {
    queued = false
    if (!sid || (!added.size && !removed.size && !project)) return
    const follow = {}
    for (const t of added) if (threads.has(t)) follow[t] = threads.get(t).state.lastSeq
    const body = { follow, unfollow: [...removed] }
    // A new stream of an inbox resumes: every thread it knows is in `follow`, so any other
    // thread of the project is new to it, and comes whole.
    if (project) (body.projects = { [o.project]: opened ? 'resume' : 'live' }), (project = false), (opened = true)
    added.clear()
    removed.clear()
    // A failed change is made again by a fresh stream, which follows everything anew.
    post(body).catch(() => sid && fail())
  }
  const schedule = () => {
    if (!queued) (queued = true), queueMicrotask(flush)
  }

  const connect = async (g) => {
    token = await fetchToken(o.getToken)
    if (g !== gen) return
    if (!token) return stop(), status('unauthorized')
    const s = (es = new o.EventSource(`${trim(o.baseUrl)}${DASHBOARD}?token=${encodeURIComponent(token)}`))
    const on = (kind, fn) =>
      s.addEventListener(kind, (e) => {
        if (g !== gen) return
        try {
          fn(JSON.parse(e.data))
        } catch {}
      })
    // Every (re)opened stream follows nothing yet: follow every thread again, each after the
    // last seq it has, so that nothing is lost or doubled.
    on('open', (d) => {
      attempt = errors = 0
      sid = d.stream
      for (const t of threads.keys()) added.add(t)
      removed.clear()
      project = !!inbox
      flush()
    })
    // An inbox learns of its threads as they join: each after the seq it joined at.
    const known = (t, seq) => threads.get(t) || (inbox && entry(t, inbox, seq))
    on('joined', (d) => known(d.thread, d.seq) && status('live', d.thread))
    for (const kind of KINDS) on(kind, (d) => { const e = known(d.thread, 0); e && e.state.apply(kind, d.data, d.seq) })
    on('revoked', (d) => status('forbidden', d.thread))
    on('expired', () => restart(0))
    s.onerror = () => {
      if (g !== gen) return
      sid = null
      if (s.readyState === 2 || ++errors >= o.maxErrors) fail()
      else status('reconnecting')
    }
    // Renew the stream's token before it expires; if that fails, a fresh stream.
    const renew = () => {
      const delay = refreshIn(token)
      if (delay)
        timer = setTimeout(async () => {
          if (g !== gen) return
          token = await fetchToken(o.getToken)
          if (g === gen) post({}).then(renew, () => restart(0))
        }, delay)
    }
    renew()
  }

  const start = () => started || ((started = true), connect(gen))
  // The last subscription gone: close, unless another arrives in this same turn (React's
  // StrictMode unmounts and mounts again at once).
  const closeSoon = () =>
    setTimeout(() => {
      if ((inbox ? inbox.size : threads.size) || connections.get(key) !== conn) return
      connections.delete(key)
      gen++
      stop()
    })

  const conn = {
    /** Adds a subscription of thread `t` (of the inbox with t null): `sub` has the callbacks. */
    add(t, sub) {
      if (inbox) return void (inbox.add(sub), sub.status(sid ? 'live' : 'connecting'), start())
      let e = threads.get(t)
      if (!e) {
        e = entry(t, new Set(), 0)
        removed.delete(t)
        added.add(t)
        schedule()
      }
      e.subs.add(sub)
      sub.status(e.status)
      start()
      return e
    },
    remove(t, sub) {
      if (inbox) return inbox.delete(sub) && !inbox.size && closeSoon()
      const e = threads.get(t)
      if (!e || !e.subs.delete(sub) || e.subs.size) return
      threads.delete(t)
      if (!added.delete(t)) removed.add(t), schedule()
      if (!threads.size) closeSoon()
    },
    /** The replies of thread `t`, as this connection holds them. */
    replies: (t) => (threads.has(t) ? threads.get(t).state.list() : []),
    reconnect() {
      attempt = errors = 0
      status('connecting')
      restart(0)
    },
    o,
  }
  return conn
}

/** A subscription on the page's connection for `key` (made from `o` if there is none). */
const follow = (key, o, t, { getToken, onReply, onDelete, onReset, onChange, onStatus }) => {
  let conn = connections.get(key)
  if (!conn) connections.set(key, (conn = connection(key, o)))
  // Every subscription of a connection shares its token scope; the latest getToken serves all.
  conn.o.getToken = getToken
  let closed = false
  let status
  const sub = {
    cb: { onReply, onDelete, onReset, onChange },
    status: (s) => {
      if (s !== status && !closed) (status = s), onStatus && onStatus(s)
    },
  }
  const e = conn.add(t, sub)
  // A thread another subscription already follows: what it holds, at once.
  if (e && e.state.list().length && onChange) onChange(e.state.list(), t)
  return {
    unsubscribe() {
      if (!closed) (closed = true), (sub.cb = {}), conn.remove(t, sub)
    },
    reconnect: () => !closed && conn.reconnect(),
    replies: (thread = t) => conn.replies(thread),
    get lastSeq() {
      return e ? e.state.lastSeq : 0
    },
    get status() {
      return status
    },
  }
}

const options = ({ baseUrl = '', EventSource = globalThis.EventSource, fetch = globalThis.fetch, retryMin = 1000, retryMax = 30000, maxErrors = 3 }) => ({
  baseUrl,
  EventSource,
  fetch,
  retryMin,
  retryMax,
  maxErrors,
})

export function followThread(opts) {
  const o = options(opts)
  return follow(`${trim(o.baseUrl)}\n${opts.scope || ''}`, o, opts.feedbackId, opts)
}

/**
 * Follows a whole project (an inbox): every change of every thread of it, threads new to the
 * project included; callbacks get the thread as their last argument. An inbox has a connection
 * of its own (per base URL, scope and project), shared by the page's inboxes of that project.
 */
export function followProject(opts) {
  const o = { ...options(opts), project: opts.projectId }
  return follow(`${trim(o.baseUrl)}\n${opts.scope || ''}\n${opts.projectId}`, o, null, opts)
}

/** The page's open dashboard connections (for tests and diagnostics). */
export const dashboardConnections = () => connections.size
