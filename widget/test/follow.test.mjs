import { test, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { followThread, followProject, dashboardConnections } from '../threadcast.js'
import { fakeEventSource, makeToken } from '../test-utils/fake-eventsource.mjs'
import { SimDashboard } from '../test-utils/fake-dashboard.mjs'

const open = []
afterEach(async () => {
  while (open.length) open.pop().unsubscribe()
  await tick(5)
  assert.equal(dashboardConnections(), 0, 'every test leaves no connection open')
})

const tick = (ms = 2) => new Promise((r) => setTimeout(r, ms))
async function until(cond, what, ms = 2000) {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`)
    await tick()
  }
}

/** A page of follows on one simulated dashboard stream. */
function page(opts = {}) {
  const server = new SimDashboard(opts)
  const ES = fakeEventSource(server)
  const follow = (feedbackId, more = {}) => {
    const log = { replies: [], status: [] }
    const sub = followThread({
      baseUrl: 'https://rt.example.com',
      feedbackId,
      getToken: () => makeToken({ projects: ['p'] }),
      EventSource: ES,
      fetch: server.fetch,
      retryMin: 1,
      retryMax: 4,
      onChange: (r) => (log.replies = r),
      onStatus: (s) => log.status.push(s),
      ...more,
    })
    open.push(sub)
    return Object.assign(sub, { log })
  }
  return { server, ES, follow }
}

const contents = (sub) => sub.replies().map((r) => r.content)

test('many threads share one connection, and each gets its own replies', async () => {
  const { server, ES, follow } = page()
  const subs = ['a', 'b', 'c'].map((t) => follow(t))
  await until(() => subs.every((s) => s.status === 'live'), 'every thread joined')
  assert.equal(ES.instances.length, 1, 'one EventSource for three threads')
  assert.equal(server.posts.length, 1, 'the three follows went in one POST')
  assert.deepEqual(server.posts[0].follow, { a: 0, b: 0, c: 0 }, 'each from its start')
  server.insert('a', { content: 'for a' })
  server.insert('b', { content: 'for b' })
  server.insert('a', { content: 'a again' })
  await until(() => contents(subs[0]).length == 2, "a's replies")
  assert.deepEqual(contents(subs[0]), ['for a', 'a again'])
  assert.deepEqual(contents(subs[1]), ['for b'])
  assert.deepEqual(contents(subs[2]), [])
})

test('the connection opens with the first follow and closes with the last', async () => {
  const { server, ES, follow } = page()
  const a = follow('a')
  const b = follow('b')
  await until(() => server.open == 1, 'the stream to open')
  a.unsubscribe()
  await tick(5)
  assert.equal(server.open, 1, 'b still follows')
  assert.deepEqual(server.posts.at(-1).unfollow, ['a'])
  b.unsubscribe()
  await until(() => server.open == 0, 'the last unsubscribe to close the stream')
  assert.equal(ES.instances.length, 1)
})

test("StrictMode's mount, unmount, mount keeps one connection and one follow", async () => {
  const { server, ES, follow } = page()
  follow('a').unsubscribe()
  const again = follow('a')
  await until(() => again.status === 'live', 'the remounted follow to be live')
  await tick(5)
  assert.equal(ES.instances.length, 1, 'one connection ever')
  assert.equal(server.open, 1)
  assert.deepEqual(
    server.posts.map((p) => [p.follow, p.unfollow]),
    [[{ a: 0 }, []]],
    'the transient unmount never reached the server',
  )
})

test('moving a subscription to another thread keeps the connection', async () => {
  const { server, ES, follow } = page()
  let sub = follow('a')
  const other = follow('x')
  await until(() => sub.status === 'live', 'a live')
  server.insert('a', { content: 'of a' })
  await until(() => contents(sub).length == 1, "a's reply")
  sub.unsubscribe()
  sub = follow('b')
  server.insert('b', { content: 'of b' })
  await until(() => contents(sub).length == 1, "b's reply")
  assert.deepEqual(contents(sub), ['of b'], 'nothing of a')
  assert.equal(ES.instances.length, 1)
  assert.deepEqual(server.posts.at(-1), { follow: { b: 0 }, unfollow: ['a'] }, 'one change')
  assert.equal(other.status, 'live')
})

test('a dropped connection follows again after each thread\'s last seq: nothing lost or doubled', async () => {
  const { server, follow } = page()
  const a = follow('a')
  const b = follow('b')
  await until(() => a.status === 'live' && b.status === 'live', 'both live')
  server.insert('a', { id: 'a1' })
  server.insert('b', { id: 'b1' })
  server.insert('b', { id: 'b2' })
  await until(() => contents(b).length == 2, "b's replies")
  server.dropAll()
  server.insert('a', { id: 'a2' }) // while away
  server.delete('b', 'b1')
  await until(() => server.opened == 2, 'a second stream')
  await until(() => contents(a).length == 2 && contents(b).length == 1, 'the catch-up')
  assert.deepEqual(server.posts.at(-1).follow, { a: 1, b: 2 }, 'each after its own seq')
  assert.deepEqual(a.replies().map((r) => r.id), ['a1', 'a2'])
  assert.deepEqual(b.replies().map((r) => r.id), ['b2'])
  server.insert('a', { id: 'a3' })
  await until(() => contents(a).length == 3, 'live again')
})

test('a thread the token does not cover is forbidden; the others carry on', async () => {
  const { server, follow } = page({ refuse: ['secret'] })
  const ok = follow('ok')
  const no = follow('secret')
  await until(() => no.status === 'forbidden' && ok.status === 'live', 'the verdicts')
  server.insert('ok', { content: 'fine' })
  await until(() => contents(ok).length == 1, 'the reply')
})

test('a second follow of the same thread gets what the first holds at once', async () => {
  const { server, follow } = page()
  const first = follow('a')
  await until(() => first.status === 'live', 'live')
  server.insert('a', { content: 'one' })
  await until(() => contents(first).length == 1, 'the reply')
  const second = follow('a')
  assert.deepEqual(contents(second), ['one'])
  assert.equal(second.status, 'live')
  assert.equal(server.posts.length, 1, 'no second follow on the server')
})

test('an inbox follows a whole project, threads new to it included, and resumes after a drop', async () => {
  const server = new SimDashboard()
  const ES = fakeEventSource(server)
  server.projectOf.set('old', 'p')
  server.projectOf.set('other', 'q')
  server.insert('old', { id: 'o1' })
  const got = []
  const inbox = followProject({
    projectId: 'p',
    getToken: () => makeToken({ projects: ['p'] }),
    EventSource: ES,
    fetch: server.fetch,
    retryMin: 1,
    retryMax: 4,
    onReply: (r, prev, thread) => got.push(`${thread}:${r.id}`),
  })
  open.push(inbox)
  await until(() => inbox.status === 'live', 'the inbox live')
  assert.deepEqual(server.posts[0], { follow: {}, unfollow: [], projects: { p: 'live' } })
  server.insert('old', { id: 'o2' })
  server.projectOf.set('new', 'p')
  server.insert('new', { id: 'n1' })
  server.insert('other', { id: 'x1' })
  await until(() => got.length == 2, 'two replies')
  assert.deepEqual(got, ['old:o2', 'new:n1'], 'live from now, a new thread whole, nothing of another project')

  server.dropAll()
  server.insert('new', { id: 'n2' }) // while away
  server.projectOf.set('newer', 'p')
  server.insert('newer', { id: 'w1' })
  await until(() => got.length == 4, 'the catch-up')
  assert.deepEqual(server.posts.at(-1).projects, { p: 'resume' })
  assert.deepEqual(server.posts.at(-1).follow, { old: 2, new: 1 }, 'each known thread after its seq')
  assert.deepEqual(got.slice(2).sort(), ['new:n2', 'newer:w1'])
  assert.deepEqual(inbox.replies('new').map((r) => r.id), ['n1', 'n2'])
  assert.equal(ES.instances.length, 1, 'the browser reconnected the one EventSource')
})
