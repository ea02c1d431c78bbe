// A stand-in for the broadcaster, for working on the widget and its demo page without Rust or
// PostgreSQL: in-memory threads, the same HTTP contract (stream, replies, demo routes), HS256
// tokens. Not the product; the real server is broadcaster/. Zero dependencies.
//
//   node dev/mock-server.mjs [--port 8787]      then open http://127.0.0.1:8787/demo/
//
// Extra routes to play the part of psql:
//   POST   /dev/replies      {"feedbackId"?, "author_type"?, "author_name"?, "content"}  (insert)
//   PATCH  /dev/replies/:id  {"content"}                                                  (update)
//   DELETE /dev/replies/:id                                                               (delete)
//   POST   /dev/drop         ends every open stream (as a restart or a network failure would)

import http from 'node:http'
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { extname, join, normalize } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('..', import.meta.url)) // widget/
const SECRET = process.env.THREADCAST_JWT_SECRET || 'mock-secret'
const MAX_CONTENT = 10_000
const HEARTBEAT_MS = 15_000
const DEFAULT_TTL = 3600

// ---- tokens ----

const b64 = (buf) => Buffer.from(buf).toString('base64url')
const sign = (data) => createHmac('sha256', SECRET).update(data).digest()

export function mint(claims) {
  const head = b64(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))
  const body = b64(JSON.stringify(claims))
  return `${head}.${body}.${b64(sign(`${head}.${body}`))}`
}

function verify(token) {
  const [head, body, sig] = (token || '').split('.')
  if (!sig) return [null, 'the token is malformed']
  const want = sign(`${head}.${body}`)
  const got = Buffer.from(sig, 'base64url')
  if (got.length !== want.length || !timingSafeEqual(got, want)) return [null, "the token's signature is not valid"]
  let claims
  try {
    claims = JSON.parse(Buffer.from(body, 'base64url'))
  } catch {
    return [null, 'the token is malformed']
  }
  if (typeof claims.exp !== 'number') return [null, 'the token has no exp claim']
  if (claims.exp * 1000 <= Date.now()) return [null, 'the token has expired']
  return [claims, null]
}

// ---- threads ----

const threads = new Map() // feedbackId -> { title, seq, rows: Map, tombstones: Map, clients: Set }

function thread(id, title = 'Feedback thread') {
  if (!threads.has(id)) threads.set(id, { title, seq: 0, rows: new Map(), tombstones: new Map(), clients: new Set() })
  return threads.get(id)
}

function frame(type, seq, data) {
  return `id: ${seq}\nevent: ${type}\ndata: ${JSON.stringify(data)}\n\n`
}

function insert(feedbackId, fields) {
  const t = thread(feedbackId)
  const seq = ++t.seq
  const row = {
    id: fields.id || randomUUID(),
    feedback_id: feedbackId,
    author_type: fields.author_type || 'end_user',
    author_name: fields.author_name ?? null,
    content: fields.content,
    created_at: fields.created_at || new Date().toISOString(),
    thread_seq: seq,
  }
  t.rows.set(row.id, row)
  for (const res of t.clients) res.write(frame('reply', seq, row))
  return row
}

function update(feedbackId, id, fields) {
  const t = thread(feedbackId)
  const seq = ++t.seq
  const row = { ...t.rows.get(id), ...fields, thread_seq: seq }
  t.rows.set(id, row)
  for (const res of t.clients) res.write(frame('reply', seq, row))
  return row
}

function remove(feedbackId, id) {
  const t = thread(feedbackId)
  const seq = ++t.seq
  t.rows.delete(id)
  t.tombstones.set(id, seq)
  for (const res of t.clients) res.write(frame('delete', seq, { id }))
}

function findRow(id) {
  for (const [feedbackId, t] of threads) if (t.rows.has(id)) return [feedbackId, t.rows.get(id)]
  return [null, null]
}

// Demo data, in the spirit of sql/demo.sql.
const DEMO = '0b9a7a52-3d1c-4a8e-9f4e-2d7c1b6a5e01'
const OTHER = '0b9a7a52-3d1c-4a8e-9f4e-2d7c1b6a5e02'
thread(DEMO, 'Checkout button is hard to find on mobile')
thread(OTHER, 'Dark mode colours in the pricing table')
{
  const t0 = Date.now() - 40 * 60_000
  const at = (min) => new Date(t0 + min * 60_000).toISOString()
  insert(DEMO, { author_type: 'end_user', author_name: 'Maya', content: 'On my phone the checkout button sits below the fold. I scrolled past it twice.', created_at: at(0) })
  insert(DEMO, { author_type: 'agency', author_name: 'Studio North', content: 'Thanks Maya! Which phone and browser are you on?', created_at: at(6) })
  insert(DEMO, { author_type: 'end_user', author_name: 'Maya', content: 'iPhone 13, Safari.', created_at: at(9) })
  insert(OTHER, { author_type: 'end_user', author_name: 'Jon', content: 'The grey on grey in dark mode is unreadable.', created_at: at(2) })
}

// ---- HTTP ----

const json = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' })
  res.end(JSON.stringify(body))
}
const fail = (res, status, error) => json(res, status, { error })

async function body(req) {
  const chunks = []
  for await (const c of req) chunks.push(c)
  return Buffer.concat(chunks).toString()
}

function bearer(req, url) {
  const h = req.headers.authorization
  if (h) {
    const [scheme, token] = h.split(' ')
    return scheme?.toLowerCase() === 'bearer' ? token : null
  }
  return url.searchParams.get('token')
}

const lastPost = new Map() // token -> time of its last POST (rate limit)
const RATE_MS = Number(process.env.MOCK_RATE_MS || 200)

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.png': 'image/png', '.ts': 'text/plain; charset=utf-8' }

async function serveStatic(res, dir, rel) {
  const file = normalize(join(ROOT, dir, rel || 'index.html'))
  if (!file.startsWith(join(ROOT, dir))) return fail(res, 404, 'not found')
  try {
    const data = await readFile(file)
    res.writeHead(200, { 'content-type': TYPES[extname(file)] || 'application/octet-stream', 'cache-control': 'no-store' })
    res.end(data)
  } catch {
    fail(res, 404, 'not found')
  }
}

function stream(req, res, url) {
  const feedbackId = url.searchParams.get('feedbackId')
  if (!feedbackId) return fail(res, 400, 'feedbackId is required')
  const [claims, why] = verify(bearer(req, url))
  if (!claims) return fail(res, 401, why)
  if (claims.feedback_id !== feedbackId) return fail(res, 403, 'this token is for another thread')
  const header = req.headers['last-event-id']
  const last = header || url.searchParams.get('lastEventId')
  const history = url.searchParams.get('history')
  if (last != null && !/^\d+$/.test(last)) return fail(res, 400, 'lastEventId must be a sequence number')
  const t = thread(feedbackId)
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', 'x-accel-buffering': 'no' })
  res.write('retry: 1000\n\n')
  let events = []
  if (last != null) {
    for (const row of t.rows.values()) if (row.thread_seq > +last) events.push(['reply', row.thread_seq, row])
    for (const [id, seq] of t.tombstones) if (seq > +last) events.push(['delete', seq, { id }])
  } else if (history) {
    events = [...t.rows.values()].map((r) => ['reply', r.thread_seq, r]).slice(-Number(history))
  }
  events.sort((a, b) => a[1] - b[1])
  for (const [type, seq, data] of events) res.write(frame(type, seq, data))
  t.clients.add(res)
  const beat = setInterval(() => res.write(': heartbeat\n\n'), HEARTBEAT_MS)
  req.on('close', () => {
    clearInterval(beat)
    t.clients.delete(res)
  })
}

async function postReply(req, res, url) {
  const token = bearer(req, url)
  const [claims, why] = verify(token)
  if (!claims) return fail(res, 401, why)
  let input
  try {
    input = JSON.parse(await body(req))
  } catch {
    return fail(res, 400, 'the body must be JSON')
  }
  if (typeof input?.content !== 'string') return fail(res, 400, 'content must be a string')
  if (input.client_id != null && !/^[0-9a-f-]{36}$/i.test(input.client_id)) return fail(res, 400, 'client_id must be a UUID')
  const t = thread(claims.feedback_id)
  const existing = input.client_id && t.rows.get(input.client_id)
  if (existing) return json(res, 200, existing)
  if ([...input.content].length > MAX_CONTENT) return fail(res, 413, `content is longer than ${MAX_CONTENT} characters`)
  if (!input.content.trim()) return fail(res, 422, 'content is empty')
  const now = Date.now()
  if (now - (lastPost.get(token) || 0) < RATE_MS) return fail(res, 429, 'too many replies; slow down')
  lastPost.set(token, now)
  const row = insert(claims.feedback_id, {
    id: input.client_id,
    author_type: claims.role === 'agency' ? 'agency' : 'end_user',
    author_name: input.author_name ?? null,
    content: input.content,
  })
  json(res, 201, row)
}

async function route(req, res) {
  const url = new URL(req.url, 'http://localhost')
  const path = url.pathname
  if (req.method === 'GET' && path === '/api/widget/stream') return stream(req, res, url)
  if (req.method === 'POST' && path === '/api/widget/replies') return postReply(req, res, url)
  if (req.method === 'GET' && path === '/demo/thread') return json(res, 200, { feedbackId: DEMO, title: thread(DEMO).title })
  if (req.method === 'GET' && path === '/demo/token') {
    const feedbackId = url.searchParams.get('feedbackId')
    const role = url.searchParams.get('role') === 'agency' ? 'agency' : 'end_user'
    const ttl = Number(url.searchParams.get('ttl')) || DEFAULT_TTL
    if (!feedbackId) return fail(res, 400, 'feedbackId is required')
    return json(res, 200, { token: mint({ feedback_id: feedbackId, role, exp: Math.floor(Date.now() / 1000) + ttl }) })
  }
  if (req.method === 'GET' && (path === '/demo' || path === '/widget')) {
    res.writeHead(308, { location: `${path}/${url.search}` })
    return res.end()
  }
  if (req.method === 'GET' && path.startsWith('/demo/')) return serveStatic(res, 'demo', path.slice(6))
  if (req.method === 'GET' && path.startsWith('/widget/')) return serveStatic(res, '', path.slice(8))
  if (path === '/dev/replies' && req.method === 'POST') {
    const input = JSON.parse((await body(req)) || '{}')
    return json(res, 201, insert(input.feedbackId || DEMO, input))
  }
  const m = path.match(/^\/dev\/replies\/([^/]+)$/)
  if (m) {
    const [feedbackId, row] = findRow(m[1])
    if (!row) return fail(res, 404, 'no such reply')
    if (req.method === 'PATCH') return json(res, 200, update(feedbackId, row.id, JSON.parse(await body(req))))
    if (req.method === 'DELETE') {
      remove(feedbackId, row.id)
      return json(res, 200, { id: row.id })
    }
  }
  if (path === '/dev/drop' && req.method === 'POST') {
    for (const t of threads.values()) for (const c of t.clients) c.destroy()
    return json(res, 200, { dropped: true })
  }
  if (path === '/') {
    res.writeHead(302, { location: '/demo/' })
    return res.end()
  }
  fail(res, 404, 'not found')
}

export function start(port = 8787, host = '127.0.0.1') {
  const server = http.createServer((req, res) =>
    route(req, res).catch((e) => {
      console.error(e)
      if (!res.headersSent) fail(res, 500, 'internal error')
    }),
  )
  return new Promise((resolve) => server.listen(port, host, () => resolve(server)))
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf('--port')
  const port = i > 0 ? Number(process.argv[i + 1]) : Number(process.env.PORT || 8787)
  const server = await start(port)
  const { port: bound } = server.address()
  console.log(`mock broadcaster on http://127.0.0.1:${bound}/demo/  (thread ${DEMO})`)
}
