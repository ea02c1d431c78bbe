import { test, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { subscribe as realSubscribe, tokenExpiry } from '../threadcast.js'
import { fakeEventSource, makeToken, SimServer } from '../test-utils/fake-eventsource.mjs'

// Every subscription is closed after its test, passed or failed, so that a failing test
// cannot leave reconnect timers running and keep the runner from exiting.
const open = []
const subscribe = (opts) => {
  const sub = realSubscribe(opts)
  open.push(sub)
  return sub
}
afterEach(() => {
  while (open.length) open.pop().unsubscribe()
})

const THREAD = '7c9e6679-7425-40de-944b-e07fc1f90ae7'

/** Waits until cond() is truthy (polling), or fails after `ms`. */
async function until(cond, ms = 2000, what = String(cond)) {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 2))
  }
}
const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms))

const row = (id, seq, extra = {}) => ({
  id,
  feedback_id: THREAD,
  author_type: 'end_user',
  author_name: 'Alex',
  content: `content of ${id}`,
  created_at: '2024-01-01T00:00:00Z',
  thread_seq: seq,
  ...extra,
})

/** A subscription on a bare fake EventSource (no server): the test drives every event. */
function manual(opts = {}) {
  const ES = fakeEventSource()
  const log = { status: [], reply: [], del: [], change: 0, tokens: 0 }
  const sub = subscribe({
    baseUrl: 'https://rt.example.com/',
    feedbackId: THREAD,
    getToken: () => `tok-${++log.tokens}`,
    onStatus: (s) => log.status.push(s),
    onReply: (r, prev) => log.reply.push([r, prev]),
    onDelete: (id, prev) => log.del.push([id, prev]),
    onChange: () => log.change++,
    EventSource: ES,
    retryMin: 1,
    retryMax: 4,
    ...opts,
  })
  return { ES, sub, log }
}

/** A subscription on a SimServer thread, with tokens the server can revoke. */
function simulated(opts = {}) {
  const server = new SimServer(THREAD)
  const ES = fakeEventSource(server)
  const tokens = []
  const statuses = []
  const sub = subscribe({
    baseUrl: '',
    feedbackId: THREAD,
    getToken: async () => {
      await tick(1)
      const t = makeToken({ feedback_id: THREAD, n: tokens.length })
      tokens.push(t)
      return t
    },
    onStatus: (s) => statuses.push(s),
    EventSource: ES,
    retryMin: 1,
    retryMax: 8,
    ...opts,
  })
  return { server, ES, sub, tokens, statuses }
}

const ids = (sub) => sub.replies().map((r) => r.id)
const seqs = (sub) => sub.replies().map((r) => r.thread_seq)

test('connects to the stream URL with feedbackId and token, asking for the whole thread', async () => {
  const { ES, sub, log } = manual()
  await until(() => ES.last)
  const url = new URL(ES.last.url)
  assert.equal(url.origin + url.pathname, 'https://rt.example.com/api/widget/stream')
  assert.equal(url.searchParams.get('feedbackId'), THREAD)
  assert.equal(url.searchParams.get('token'), 'tok-1')
  assert.equal(url.searchParams.get('lastEventId'), '0')
  assert.equal(url.searchParams.has('history'), false)
  assert.deepEqual(log.status, ['connecting'])
  ES.last.open()
  assert.deepEqual(log.status, ['connecting', 'live'])
  assert.equal(sub.status, 'live')
  sub.unsubscribe()
})

test('history: N asks for the last N replies, history: 0 for live changes only; resumes use lastEventId', async () => {
  for (const [history, param] of [[20, 'history=20'], [0, null]]) {
    const { ES, sub } = manual({ history })
    await until(() => ES.last)
    assert.equal(ES.last.params.has('lastEventId'), false)
    if (param) assert.match(ES.last.url, new RegExp(`&${param}$`))
    else assert.equal(ES.last.params.has('history'), false)
    ES.last.open()
    ES.last.send('reply', 9, row('a', 9))
    ES.last.refuse()
    await until(() => ES.instances.length === 2)
    assert.equal(ES.last.params.get('lastEventId'), '9')
    assert.equal(ES.last.params.has('history'), false)
    sub.unsubscribe()
  }
})

test('a live start resumes from where the stream joined, even before its first reply', async () => {
  const { ES, sub, log } = manual({ history: 0 })
  await until(() => ES.last)
  ES.last.open()
  ES.last.send('joined', 7, {})
  assert.equal(sub.lastSeq, 7)
  assert.equal(log.change, 0, 'joining changes no reply')
  ES.last.refuse()
  await until(() => ES.instances.length === 2)
  assert.equal(ES.last.params.get('lastEventId'), '7')
  sub.unsubscribe()
})

test('the token is URL-encoded in the query', async () => {
  const { ES, sub } = manual({ getToken: () => 'a+b/c=&d' })
  await until(() => ES.last)
  assert.match(ES.last.url, /token=a%2Bb%2Fc%3D%26d/)
  assert.equal(ES.last.params.get('token'), 'a+b/c=&d')
  sub.unsubscribe()
})

test('parses the stream as sent: retry, heartbeats, named events with ids', async () => {
  const { ES, sub, log } = manual()
  await until(() => ES.last)
  const es = ES.last
  es.open()
  es.feed('retry: 2000\n\n: heartbeat\n\n')
  es.feed(`event: reply\nid: 1\ndata: ${JSON.stringify(row('a', 1))}\n\n: hb\n\n`)
  es.feed(`event: reply\nid: 2\ndata: ${JSON.stringify(row('b', 2))}\n`)
  assert.deepEqual(ids(sub), ['a']) // the second event is not complete yet
  es.feed('\n')
  assert.deepEqual(ids(sub), ['a', 'b'])
  assert.equal(sub.lastSeq, 2)
  assert.equal(log.reply.length, 2)
  assert.equal(log.change, 2)
  sub.unsubscribe()
})

test('dedupes by id: a replayed reply is shown once', async () => {
  const { ES, sub, log } = manual()
  await until(() => ES.last)
  const es = ES.last
  es.open()
  es.send('reply', 1, row('a', 1))
  es.send('reply', 1, row('a', 1)) // the same event again
  es.send('reply', 2, row('b', 2))
  es.send('reply', 1, row('a', 1)) // an old one, late
  assert.deepEqual(ids(sub), ['a', 'b'])
  assert.equal(log.reply.length, 2)
  assert.equal(log.change, 2)
  sub.unsubscribe()
})

test('orders by seq, whatever order the initial replies came in', async () => {
  const { ES, sub } = manual({ initial: [row('c', 7), row('a', 2), row('b', 5)] })
  assert.deepEqual(ids(sub), ['a', 'b', 'c'])
  assert.equal(sub.lastSeq, 7)
  await until(() => ES.last)
  // With initial replies, even the first connect resumes after them.
  assert.equal(ES.last.params.get('lastEventId'), '7')
  ES.last.open()
  ES.last.send('reply', 6, row('x', 6)) // older than what we hold: ignored
  ES.last.send('reply', 8, row('d', 8))
  assert.deepEqual(ids(sub), ['a', 'b', 'c', 'd'])
  assert.deepEqual(seqs(sub), [2, 5, 7, 8])
  sub.unsubscribe()
})

test('an updated reply replaces its earlier self and moves to its new seq', async () => {
  const { ES, sub, log } = manual()
  await until(() => ES.last)
  const es = ES.last
  es.open()
  es.send('reply', 1, row('a', 1))
  es.send('reply', 2, row('b', 2))
  es.send('reply', 3, row('a', 3, { content: 'edited' }))
  assert.deepEqual(ids(sub), ['b', 'a'])
  assert.equal(sub.replies().length, 2)
  const a = sub.replies().find((r) => r.id === 'a')
  assert.equal(a.content, 'edited')
  assert.equal(a.thread_seq, 3)
  const [latest, previous] = log.reply.at(-1)
  assert.equal(latest.content, 'edited')
  assert.equal(previous.content, 'content of a')
  sub.unsubscribe()
})

test('the event id is the seq, even if the row says otherwise', async () => {
  const { ES, sub } = manual()
  await until(() => ES.last)
  ES.last.open()
  ES.last.send('reply', 4, row('a', undefined))
  assert.equal(sub.replies()[0].thread_seq, 4)
  assert.equal(sub.lastSeq, 4)
  sub.unsubscribe()
})

test('a delete removes the reply; a stale delete is ignored', async () => {
  const { ES, sub, log } = manual()
  await until(() => ES.last)
  const es = ES.last
  es.open()
  es.send('reply', 1, row('a', 1))
  es.send('reply', 2, row('b', 2))
  es.send('delete', 3, { id: 'a' })
  assert.deepEqual(ids(sub), ['b'])
  assert.equal(log.del.length, 1)
  assert.equal(log.del[0][0], 'a')
  assert.equal(log.del[0][1].content, 'content of a')
  assert.equal(sub.lastSeq, 3)
  es.send('delete', 2, { id: 'b' }) // seq 2 <= 3: a replay, not a real delete
  assert.deepEqual(ids(sub), ['b'])
  // A delete of a reply the client never held is still reported, but changes nothing.
  const changes = log.change
  es.send('delete', 4, { id: 'zzz' })
  assert.equal(log.del.at(-1)[0], 'zzz')
  assert.equal(log.del.at(-1)[1], undefined)
  assert.equal(log.change, changes)
  sub.unsubscribe()
})

test('a reset empties the list, and later replies start it afresh', async () => {
  let resets = 0
  const { ES, sub, log } = manual({ onReset: () => resets++ })
  await until(() => ES.last)
  const es = ES.last
  es.open()
  es.send('reply', 1, row('a', 1))
  es.send('reply', 2, row('b', 2))
  const changes = log.change
  es.send('reset', 3, {})
  assert.deepEqual(ids(sub), [])
  assert.equal(resets, 1)
  assert.equal(log.change, changes + 1, 'the list changed once')
  assert.equal(sub.lastSeq, 3)
  es.send('reset', 3, {}) // a replay of the same reset changes nothing
  assert.equal(resets, 1)
  es.send('reply', 4, row('c', 4))
  assert.deepEqual(ids(sub), ['c'])
  sub.unsubscribe()
})

test('malformed data is ignored and does not advance the seq', async () => {
  const { ES, sub } = manual()
  await until(() => ES.last)
  ES.last.open()
  ES.last.send('reply', 1, '{not json')
  assert.equal(sub.lastSeq, 0)
  assert.equal(sub.replies().length, 0)
  ES.last.send('reply', 1, row('a', 1))
  assert.deepEqual(ids(sub), ['a'])
  sub.unsubscribe()
})

test('replies() returns the same array until something changes', async () => {
  const { ES, sub } = manual()
  await until(() => ES.last)
  ES.last.open()
  ES.last.send('reply', 1, row('a', 1))
  const first = sub.replies()
  assert.equal(sub.replies(), first)
  ES.last.send('reply', 2, row('b', 2))
  assert.notEqual(sub.replies(), first)
  sub.unsubscribe()
})

test('a refused connection (401, CLOSED) asks for a new token and resumes from the last seq', async () => {
  const { ES, sub, log } = manual()
  await until(() => ES.last)
  const first = ES.last
  first.open()
  first.send('reply', 1, row('a', 1))
  first.send('reply', 2, row('b', 2))
  first.refuse()
  assert.equal(sub.status, 'reconnecting')
  await until(() => ES.instances.length === 2)
  const second = ES.last
  assert.equal(log.tokens, 2)
  assert.equal(second.params.get('token'), 'tok-2')
  assert.equal(second.params.get('lastEventId'), '2')
  second.open()
  assert.deepEqual(log.status, ['connecting', 'live', 'reconnecting', 'live'])
  sub.unsubscribe()
})

test('one transient error leaves the retry to the browser; repeated errors make the client take over', async () => {
  const { ES, sub, log } = manual({ maxErrors: 3 })
  await until(() => ES.last)
  const es = ES.last
  es.open()
  es.send('reply', 5, row('a', 5))
  es.drop({ reconnect: false }) // readyState CONNECTING: the browser retries by itself
  assert.equal(sub.status, 'reconnecting')
  await tick(20)
  assert.equal(ES.instances.length, 1)
  assert.equal(es.readyState, 0, 'the client must not close a stream the browser is retrying')
  es.open() // the browser's retry succeeded
  assert.equal(sub.status, 'live')
  // Now three failures in a row without an open in between.
  es.drop({ reconnect: false })
  es.drop({ reconnect: false })
  assert.equal(ES.instances.length, 1)
  es.drop({ reconnect: false })
  assert.equal(es.readyState, 2, 'the client closed the failing stream')
  await until(() => ES.instances.length === 2)
  assert.equal(ES.last.params.get('lastEventId'), '5')
  assert.equal(log.tokens, 2)
  ES.last.open()
  assert.deepEqual(log.status, ['connecting', 'live', 'reconnecting', 'live', 'reconnecting', 'live'])
  sub.unsubscribe()
})

test('reconnects back off instead of hot-looping', async () => {
  const { server, ES, sub } = simulated({ retryMin: 10, retryMax: 1000 })
  server.valid = () => false // every connection is refused
  await tick(300)
  const n = ES.instances.length
  // Delays of about 5-10, 10-20, 20-40, 40-80, 80-160 ms: a handful of tries, not hundreds.
  assert.ok(n >= 3 && n <= 8, `made ${n} connections in 300 ms`)
  assert.equal(sub.status, 'reconnecting')
  sub.unsubscribe()
})

test('getToken throwing or returning nothing means unauthorized, with no stream opened', async () => {
  for (const getToken of [() => { throw new Error('signed out') }, async () => null, () => '', async () => { throw new Error('x') }]) {
    const { ES, sub, log } = manual({ getToken })
    await until(() => sub.status === 'unauthorized')
    assert.deepEqual(log.status, ['connecting', 'unauthorized'])
    assert.equal(ES.instances.length, 0)
    await tick(10)
    assert.equal(ES.instances.length, 0, 'no retry loop after unauthorized')
    sub.unsubscribe()
  }
})

test('a refused reconnect whose getToken now fails ends unauthorized; reconnect() recovers', async () => {
  let signedIn = true
  let n = 0
  const { ES, sub, log } = manual({ getToken: () => (signedIn ? `tok-${++n}` : null) })
  await until(() => ES.last)
  ES.last.open()
  ES.last.send('reply', 3, row('a', 3))
  signedIn = false
  ES.last.refuse()
  await until(() => sub.status === 'unauthorized')
  assert.deepEqual(log.status, ['connecting', 'live', 'reconnecting', 'unauthorized'])
  assert.equal(ES.instances.length, 1)
  signedIn = true
  sub.reconnect()
  await until(() => ES.instances.length === 2)
  assert.equal(ES.last.params.get('lastEventId'), '3')
  ES.last.open()
  assert.deepEqual(log.status.slice(-2), ['connecting', 'live'])
  assert.deepEqual(ids(sub), ['a'])
  sub.unsubscribe()
})

test('unsubscribe closes the stream and stops every callback', async () => {
  const { ES, sub, log } = manual()
  await until(() => ES.last)
  const es = ES.last
  es.open()
  es.send('reply', 1, row('a', 1))
  const before = JSON.stringify(log)
  sub.unsubscribe()
  assert.equal(es.readyState, 2)
  // Even a misbehaving EventSource that still delivers must not reach the callbacks.
  es.readyState = 1
  es.send('reply', 2, row('b', 2))
  es.onerror?.({})
  es.onopen?.({})
  await tick(20)
  assert.equal(JSON.stringify(log), before)
  assert.equal(ES.instances.length, 1)
  sub.unsubscribe() // idempotent
})

test('unsubscribe during a pending reconnect or a pending getToken opens nothing', async () => {
  // Pending backoff timer.
  {
    const { ES, sub, log } = manual({ retryMin: 50, retryMax: 50 })
    await until(() => ES.last)
    ES.last.open()
    ES.last.refuse()
    sub.unsubscribe()
    await tick(80)
    assert.equal(ES.instances.length, 1)
    assert.equal(log.tokens, 1)
  }
  // Pending getToken.
  {
    let release
    const gate = new Promise((r) => (release = r))
    const { ES, sub, log } = manual({ getToken: () => gate })
    sub.unsubscribe()
    release('late-token')
    await tick(10)
    assert.equal(ES.instances.length, 0)
    assert.deepEqual(log.status, ['connecting'])
  }
})

test('simulated server: token expiry mid-thread loses and doubles nothing', async () => {
  const { server, ES, sub, tokens, statuses } = simulated()
  await until(() => sub.status === 'live')
  server.insert({ id: 'a' })
  server.insert({ id: 'b' })
  assert.deepEqual(ids(sub), ['a', 'b'])

  // The token expires and the network drops: the browser retries by itself with the old URL
  // (and a Last-Event-ID header), the server answers 401, the client asks for a new token.
  server.revoked.add(tokens[0])
  ES.last.retry = 1
  server.dropAll()
  server.insert({ id: 'c' }) // committed while nobody listens
  server.update('a', { content: 'a, edited' })
  await until(() => sub.status === 'live' && ES.instances.length === 2)
  assert.equal(tokens.length, 2)
  const [, refused, resumed] = server.connections
  assert.equal(refused.status, 401)
  assert.equal(resumed.status, 200)
  assert.equal(resumed.from, 2, 'resumed from the last seq it had')
  assert.equal(new URL(resumed.url, 'http://x').searchParams.get('token'), tokens[1])

  server.insert({ id: 'd' })
  server.delete('b')
  assert.deepEqual(ids(sub), ['c', 'a', 'd'])
  assert.deepEqual(seqs(sub), [3, 4, 5])
  assert.equal(sub.lastSeq, 6)
  assert.equal(sub.replies().find((r) => r.id === 'a').content, 'a, edited')
  assert.deepEqual(statuses, ['connecting', 'live', 'reconnecting', 'live'])
  sub.unsubscribe()
})

test('simulated server: a plain network drop resumes through Last-Event-ID without a new token', async () => {
  const { server, ES, sub, tokens } = simulated()
  await until(() => sub.status === 'live')
  server.insert({ id: 'a' })
  ES.last.retry = 1
  server.dropAll()
  server.insert({ id: 'b' })
  await until(() => sub.status === 'live' && ids(sub).length === 2)
  assert.equal(ES.instances.length, 1, 'the browser reconnected the same EventSource')
  assert.equal(tokens.length, 1)
  assert.equal(server.connections.at(-1).from, 1)
  assert.deepEqual(ids(sub), ['a', 'b'])
  sub.unsubscribe()
})

test('simulated server: many drops and expiries, every reply exactly once in seq order', async () => {
  const { server, ES, sub, tokens } = simulated()
  await until(() => sub.status === 'live')
  for (let round = 0; round < 10; round++) {
    server.insert({ id: `x${round}` })
    if (round % 3 === 0) server.update(`x${round}`, { content: `edit ${round}` })
    if (round % 4 === 1) server.revoked.add(tokens.at(-1))
    ES.last.retry = 1
    server.dropAll()
    server.insert({ id: `y${round}` })
    if (round % 5 === 2) server.delete(`x${round}`)
    await until(() => sub.status === 'live' && server.clients.size === 1, 2000, `round ${round}`)
  }
  const expected = [...server.rows.values()].sort((a, b) => a.thread_seq - b.thread_seq)
  assert.deepEqual(sub.replies(), expected)
  assert.equal(sub.lastSeq, server.seq)
  assert.ok(tokens.length >= 3)
  sub.unsubscribe()
})

test('refreshes the token a little before it expires, without a reconnecting status', async () => {
  const server = new SimServer(THREAD)
  const ES = fakeEventSource(server)
  const statuses = []
  let n = 0
  const sub = subscribe({
    feedbackId: THREAD,
    // 1.5 s to live: refreshed at ~1.2 s (a fifth of the time left, at most 30 s, before exp).
    getToken: () => makeToken({ feedback_id: THREAD, exp: Date.now() / 1000 + 1.5, n: ++n }),
    onStatus: (s) => statuses.push(s),
    EventSource: ES,
  })
  await until(() => sub.status === 'live')
  server.insert({ id: 'a' })
  await until(() => ES.instances.length === 2, 3000, 'a proactive reconnect')
  assert.equal(ES.instances[0].readyState, 2, 'the old stream is closed')
  await until(() => server.clients.size === 1 && server.clients.has(ES.last))
  assert.equal(ES.last.params.get('lastEventId'), '1')
  assert.ok(n >= 2)
  server.insert({ id: 'b' })
  assert.deepEqual(ids(sub), ['a', 'b'])
  assert.deepEqual(statuses, ['connecting', 'live'])
  sub.unsubscribe()
})

test('a token without exp, or already close to it, schedules no proactive refresh', async () => {
  for (const exp of [undefined, Date.now() / 1000 + 0.5]) {
    const server = new SimServer(THREAD)
    const ES = fakeEventSource(server)
    const sub = subscribe({ feedbackId: THREAD, getToken: () => makeToken({ feedback_id: THREAD, exp }), EventSource: ES })
    await until(() => sub.status === 'live')
    await tick(100)
    assert.equal(ES.instances.length, 1)
    sub.unsubscribe()
  }
})

test('tokenExpiry reads exp from a base64url payload without padding', () => {
  // A payload whose base64url form contains '-' and '_' and needs no '=' padding to decode.
  const claims = { feedback_id: '>>>???', exp: 1893456000, name: 'ü' }
  const token = makeToken(claims)
  assert.match(token.split('.')[1], /[-_]/)
  assert.equal(tokenExpiry(token), 1893456000)
  assert.equal(tokenExpiry(makeToken({ feedback_id: 'x' })), null)
  assert.equal(tokenExpiry('not a jwt'), null)
  assert.equal(tokenExpiry(''), null)
})

test('overlapping reconnects leave exactly one open stream', async () => {
  const { ES, sub, log } = manual({
    getToken: async () => {
      await tick(10)
      return `tok-${++log.tokens}`
    },
  })
  sub.reconnect() // while the first getToken is still pending
  await tick(1)
  sub.reconnect()
  await until(() => ES.instances.length >= 1)
  await tick(40)
  const live = ES.instances.filter((es) => es.readyState !== 2)
  assert.equal(live.length, 1, `${ES.instances.length} streams made, ${live.length} left open`)
  live[0].open()
  live[0].send('reply', 1, row('a', 1))
  assert.deepEqual(ids(sub), ['a'])
  assert.equal(sub.status, 'live')
})
