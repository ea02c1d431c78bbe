// A simulated dashboard stream for the widget client's tests: the fake EventSource connects to
// it, and its `fetch` answers `POST /api/dashboard/stream/{id}` as the broadcaster does (a
// follow sends each thread's changes after the client's seq, then `joined`; later changes go to
// every stream that follows the thread). Threads number their changes 1, 2, 3, ...

export class SimDashboard {
  constructor({ refuse = [] } = {}) {
    this.threads = new Map() // thread -> { seq, rows: Map(id -> row), tombstones: Map(id -> seq) }
    this.streams = new Map() // stream id -> { es, following: Set }
    this.clients = new Set() // what the fake EventSource removes itself from on close
    this.refuse = new Set(refuse) // threads the token does not cover
    this.posts = [] // every POST body, in order
    this.opened = 0
    this.n = 0
    this.projectOf = new Map() // thread -> project
    this.fetch = this.fetch.bind(this)
  }

  /** Streams whose EventSource is not closed. */
  get open() {
    return [...this.streams.values()].filter((s) => s.es.readyState !== 2).length
  }

  log(thread) {
    if (!this.threads.has(thread)) this.threads.set(thread, { seq: 0, rows: new Map(), tombstones: new Map() })
    return this.threads.get(thread)
  }

  accept(es) {
    if (!es.params.get('token')) return es.refuse()
    const id = `s${++this.n}`
    this.opened++
    this.streams.set(id, { es, following: new Set(), projects: new Set() })
    this.clients.add(es)
    es.open()
    es.feed(`retry: 1000\n\nevent: open\ndata: ${JSON.stringify({ stream: id })}\n\n`)
  }

  emit(es, kind, data) {
    es.feed(`event: ${kind}\ndata: ${JSON.stringify(data)}\n\n`)
  }

  async fetch(url, init) {
    const id = url.split('/').pop()
    const stream = this.streams.get(id)
    const answer = (status, body) => ({ ok: status < 300, status, json: async () => body })
    if (!stream || stream.es.readyState === 2) return answer(404, { error: 'no open stream has this id' })
    const body = JSON.parse(init.body)
    this.posts.push(body)
    for (const t of body.unfollow || []) stream.following.delete(t)
    const refused = {}
    const follow = { ...body.follow }
    for (const [p, start] of Object.entries(body.projects || {})) {
      stream.projects.add(p)
      for (const [t, q] of this.projectOf) if (q === p && !(t in follow)) follow[t] = start === 'resume' ? 0 : null
    }
    for (const [t, after] of Object.entries(follow)) {
      if (this.refuse.has(t)) {
        refused[t] = 'the thread is not in the token\'s projects'
        continue
      }
      stream.following.add(t)
      const log = this.log(t)
      const changes = []
      const from = after ?? log.seq
      for (const row of log.rows.values()) if (row.thread_seq > from) changes.push(['reply', row.thread_seq, row])
      for (const [rid, seq] of log.tombstones) if (seq > from) changes.push(['delete', seq, { id: rid }])
      changes.sort((a, b) => a[1] - b[1])
      queueMicrotask(() => {
        for (const [kind, seq, data] of changes) this.emit(stream.es, kind, { thread: t, seq, data })
        this.emit(stream.es, 'joined', { thread: t, seq: from })
      })
    }
    return answer(200, { following: Object.keys(body.follow || {}).filter((t) => !refused[t]), refused })
  }

  broadcast(thread, kind, seq, data) {
    for (const { es, following, projects } of this.streams.values()) {
      if (es.readyState !== 1) continue
      // A thread new to a followed project: followed from its start (joined 0, then its changes).
      if (!following.has(thread) && projects.has(this.projectOf.get(thread))) {
        following.add(thread)
        this.emit(es, 'joined', { thread, seq: 0 })
      }
      if (following.has(thread)) this.emit(es, kind, { thread, seq, data })
    }
  }

  insert(thread, fields = {}) {
    const log = this.log(thread)
    const seq = ++log.seq
    const row = { id: fields.id ?? `${thread}-r${seq}`, feedback_id: thread, content: `reply ${seq}`, ...fields, thread_seq: seq }
    log.rows.set(row.id, row)
    this.broadcast(thread, 'reply', seq, row)
    return row
  }

  delete(thread, id) {
    const log = this.log(thread)
    const seq = ++log.seq
    log.rows.delete(id)
    log.tombstones.set(id, seq)
    this.broadcast(thread, 'delete', seq, { id })
  }

  /** Ends every stream as a network failure would (the browser then retries by itself). */
  dropAll() {
    for (const { es } of this.streams.values()) es.drop()
  }
}
