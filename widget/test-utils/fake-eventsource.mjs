// Test doubles for the widget client: a fake EventSource that parses real SSE text the way a
// browser does, and a simulated broadcaster thread that checks tokens and resumes from
// Last-Event-ID / ?lastEventId, as the real one does. No browser, no network.

const CONNECTING = 0
const OPEN = 1
const CLOSED = 2

/** Builds a FakeEventSource class bound to an optional SimServer. */
export function fakeEventSource(server) {
  return class FakeEventSource {
    static CONNECTING = CONNECTING
    static OPEN = OPEN
    static CLOSED = CLOSED
    /** Every instance ever created, in order. */
    static instances = []
    static get last() {
      return this.instances[this.instances.length - 1]
    }

    constructor(url) {
      this.url = url
      this.readyState = CONNECTING
      this.onopen = null
      this.onerror = null
      this.lastEventId = ''
      this.retry = 3000
      this.listeners = new Map()
      this.buffer = ''
      FakeEventSource.instances.push(this)
      // The connection is made asynchronously, as in a browser.
      if (server) queueMicrotask(() => this.readyState !== CLOSED && server.accept(this, null))
    }

    get params() {
      return new URL(this.url, 'http://localhost').searchParams
    }

    addEventListener(type, fn) {
      if (!this.listeners.has(type)) this.listeners.set(type, [])
      this.listeners.get(type).push(fn)
    }

    close() {
      this.readyState = CLOSED
      server?.clients.delete(this)
    }

    // ---- driven by the test or the SimServer ----

    /** The response was 200 text/event-stream. */
    open() {
      if (this.readyState === CLOSED) return
      this.readyState = OPEN
      this.onopen?.({ type: 'open' })
    }

    /** A non-200 response (e.g. 401): the browser fails the connection and never retries. */
    refuse() {
      if (this.readyState === CLOSED) return
      this.readyState = CLOSED
      server?.clients.delete(this)
      this.onerror?.({ type: 'error' })
    }

    /**
     * The network dropped: the browser fires `error` with readyState CONNECTING and, unless
     * closed, reconnects to the same URL after `retry` ms sending Last-Event-ID.
     */
    drop({ reconnect = true } = {}) {
      if (this.readyState === CLOSED) return
      server?.clients.delete(this)
      this.readyState = CONNECTING
      this.onerror?.({ type: 'error' })
      if (reconnect && server) {
        setTimeout(() => {
          if (this.readyState !== CLOSED) server.accept(this, this.lastEventId || null)
        }, this.retry)
      }
    }

    /** Feeds raw SSE text, parsed like the WHATWG spec's event stream interpretation. */
    feed(text) {
      if (this.readyState === CLOSED) return
      this.buffer += text
      const lines = this.buffer.split(/\r\n|\r|\n/)
      this.buffer = lines.pop()
      for (const line of lines) this.#line(line)
    }

    #event = { type: '', data: [] }
    #line(line) {
      if (line === '') return this.#dispatch()
      if (line.startsWith(':')) return // comment: a heartbeat
      const i = line.indexOf(':')
      const field = i < 0 ? line : line.slice(0, i)
      let value = i < 0 ? '' : line.slice(i + 1)
      if (value.startsWith(' ')) value = value.slice(1)
      if (field === 'event') this.#event.type = value
      else if (field === 'data') this.#event.data.push(value)
      else if (field === 'id' && !value.includes('\0')) this.lastEventId = value
      else if (field === 'retry' && /^\d+$/.test(value)) this.retry = +value
    }
    #dispatch() {
      const { type, data } = this.#event
      this.#event = { type: '', data: [] }
      if (!data.length) return
      const ev = { type: type || 'message', data: data.join('\n'), lastEventId: this.lastEventId }
      for (const fn of this.listeners.get(ev.type) || []) fn(ev)
    }

    /** Convenience: one SSE event as the broadcaster writes it. */
    send(type, id, data) {
      this.feed(`event: ${type}\nid: ${id}\ndata: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`)
    }
  }
}

/** An unsigned JWT-shaped token (the client only reads `exp`; the SimServer checks the rest). */
export function makeToken(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url')
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}.sig`
}

/**
 * One simulated thread on a simulated broadcaster. Each change takes the next seq; a
 * connection resumes after Last-Event-ID (header, on the browser's own reconnects) or
 * ?lastEventId, sending each row's latest state and the deletes after that seq, in seq order.
 */
export class SimServer {
  constructor(feedbackId) {
    this.feedbackId = feedbackId
    this.seq = 0
    this.rows = new Map() // id -> row (latest state)
    this.tombstones = new Map() // id -> seq
    this.clients = new Set()
    this.revoked = new Set()
    this.connections = [] // { url, lastEventId, status }
  }

  valid(token) {
    if (!token || this.revoked.has(token)) return false
    try {
      const claims = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString())
      if (claims.feedback_id !== this.feedbackId) return false
      return !claims.exp || claims.exp * 1000 > Date.now()
    } catch {
      return false
    }
  }

  accept(es, lastEventIdHeader) {
    const p = es.params
    const from = +(lastEventIdHeader ?? p.get('lastEventId') ?? 0)
    const ok = p.get('feedbackId') === this.feedbackId && this.valid(p.get('token'))
    this.connections.push({ url: es.url, from, status: ok ? 200 : 401 })
    if (!ok) return es.refuse()
    es.open()
    es.feed('retry: 1000\n\n: heartbeat\n\n')
    for (const [type, seq, data] of this.changesAfter(from)) es.send(type, seq, data)
    this.clients.add(es)
  }

  changesAfter(from) {
    const out = []
    for (const row of this.rows.values()) if (row.thread_seq > from) out.push(['reply', row.thread_seq, row])
    for (const [id, seq] of this.tombstones) if (seq > from) out.push(['delete', seq, { id }])
    return out.sort((a, b) => a[1] - b[1])
  }

  broadcast(type, seq, data) {
    for (const es of this.clients) es.send(type, seq, data)
  }

  insert(fields) {
    const seq = ++this.seq
    const row = {
      id: fields.id ?? `r${seq}`,
      feedback_id: this.feedbackId,
      author_type: 'end_user',
      author_name: 'Alex',
      content: `reply ${seq}`,
      created_at: new Date(1700000000000 + seq * 1000).toISOString(),
      ...fields,
      thread_seq: seq,
    }
    this.rows.set(row.id, row)
    this.broadcast('reply', seq, row)
    return row
  }

  update(id, fields) {
    const seq = ++this.seq
    const row = { ...this.rows.get(id), ...fields, thread_seq: seq }
    this.rows.set(id, row)
    this.broadcast('reply', seq, row)
    return row
  }

  delete(id) {
    const seq = ++this.seq
    this.rows.delete(id)
    this.tombstones.set(id, seq)
    this.broadcast('delete', seq, { id })
  }

  /** Ends every live stream as a network failure would (the browser then retries by itself). */
  dropAll() {
    for (const es of [...this.clients]) es.drop()
  }
}
