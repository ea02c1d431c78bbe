// useThreadReplies in React (its development build, under StrictMode) on a DOM in Node
// (happy-dom), against the simulated dashboard stream: one connection for every card, dedupe by
// id, a feedbackId change moving the subscription, and cleanup on unmount.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Window } from 'happy-dom'

const window = new Window()
globalThis.window = window
globalThis.document = window.document
// Node 20 has no navigator; React's DOM client reads its userAgent.
if (!globalThis.navigator) globalThis.navigator = window.navigator
globalThis.IS_REACT_ACT_ENVIRONMENT = false // updates come from the stream, as in a browser

const { createElement: h, StrictMode } = await import('react')
const { createRoot } = await import('react-dom/client')
const { useThreadReplies } = await import('../react/index.js')
const { dashboardConnections } = await import('../threadcast.js')
const { fakeEventSource, makeToken } = await import('../test-utils/fake-eventsource.mjs')
const { SimDashboard } = await import('../test-utils/fake-dashboard.mjs')

const tick = (ms = 2) => new Promise((r) => setTimeout(r, ms))
async function until(cond, what, ms = 3000) {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`)
    await tick()
  }
}

test('cards share one connection, dedupe, move and clean up under StrictMode', async () => {
  const server = new SimDashboard()
  const ES = fakeEventSource(server)
  let renders = 0
  // An inline getToken on purpose: the hook reads the latest one and does not follow again.
  const Card = ({ id }) => {
    renders++
    const { replies, status } = useThreadReplies(id, {
      getToken: () => makeToken({ projects: ['p'] }),
      scope: 'react-test',
      EventSource: ES,
      fetch: server.fetch,
    })
    return h('p', { 'data-card': id, 'data-status': status }, replies.map((r) => r.content).join('|'))
  }
  const container = document.createElement('div')
  document.body.appendChild(container)
  const root = createRoot(container)
  const page = (ids) => h(StrictMode, null, ids.map((id, i) => h(Card, { key: i, id })))
  const card = (i) => container.querySelectorAll('[data-card]')[i]
  const text = (i) => card(i)?.textContent

  root.render(page(['a', 'b']))
  await until(() => card(0)?.dataset.status === 'live' && card(1)?.dataset.status === 'live', 'both cards live')
  assert.equal(ES.instances.length, 1, 'one connection for both cards, StrictMode double mount included')
  assert.deepEqual(server.posts, [{ follow: { a: 0, b: 0 }, unfollow: [] }], 'the double mount never reached the server')

  const row = server.insert('a', { content: 'for a' })
  server.insert('b', { content: 'for b' })
  await until(() => text(0) === 'for a' && text(1) === 'for b', 'each card its own reply')
  // The same change again (a replay): shown once.
  const [stream] = server.streams.values()
  server.emit(stream.es, 'reply', { thread: 'a', seq: row.thread_seq, data: row })
  server.insert('a', { content: 'again' })
  await until(() => text(0) === 'for a|again', "a's second reply")

  // The second card moves to thread c: same connection, one change on the server.
  root.render(page(['a', 'c']))
  server.insert('c', { content: 'for c' })
  server.insert('b', { content: 'b after the move' })
  await until(() => text(1) === 'for c', "c's reply on the moved card")
  assert.equal(ES.instances.length, 1)
  assert.deepEqual(server.posts.at(-1), { follow: { c: 0 }, unfollow: ['b'] })
  assert.ok(renders > 0)

  root.unmount()
  await until(() => server.open === 0, 'the connection to close with the last card')
  await tick(5)
  assert.equal(dashboardConnections(), 0)
})
