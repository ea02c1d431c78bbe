import { test } from 'node:test'
import assert from 'node:assert/strict'
import { send } from '../threadcast.js'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

const json = (status, body) => ({ ok: status >= 200 && status < 300, status, json: async () => body })

/**
 * A fake broadcaster behind fetch: idempotent on client_id (201 first, 200 on repeat). `plan`
 * lists what to do with each request in turn: 'ok', 'lost' (stored, but the response never
 * arrives: a network error), 'down' (a network error before anything is stored), or a status.
 */
function fakeFetch(plan = []) {
  const rows = new Map()
  const calls = []
  const fetch = async (url, init) => {
    const body = JSON.parse(init.body)
    calls.push({ url, init, body })
    const step = plan[calls.length - 1] ?? 'ok'
    if (step === 'down') throw new TypeError('fetch failed')
    if (typeof step === 'number') return json(step, { error: `status ${step}` })
    const existed = rows.has(body.client_id)
    if (!existed) rows.set(body.client_id, { id: body.client_id, content: body.content, author_name: body.author_name, thread_seq: rows.size + 1 })
    if (step === 'lost') throw new TypeError('network connection lost')
    return json(existed ? 200 : 201, rows.get(body.client_id))
  }
  return { fetch, calls, rows }
}

test('POSTs JSON with a bearer token and a generated client_id', async () => {
  const { fetch, calls } = fakeFetch()
  const row = await send({ baseUrl: 'https://rt.example.com/', getToken: async () => 'tok', content: 'Hello', authorName: 'Alex', fetch })
  assert.equal(calls.length, 1)
  const [{ url, init, body }] = calls
  assert.equal(url, 'https://rt.example.com/api/widget/replies')
  assert.equal(init.method, 'POST')
  assert.equal(init.headers.authorization, 'Bearer tok')
  assert.equal(init.headers['content-type'], 'application/json')
  assert.match(body.client_id, UUID)
  assert.deepEqual(body, { content: 'Hello', author_name: 'Alex', client_id: body.client_id })
  assert.equal(row.id, body.client_id)
})

test('uses the given client_id, and omits author_name when not given', async () => {
  const { fetch, calls } = fakeFetch()
  await send({ getToken: () => 'tok', content: 'x', clientId: 'c-1', fetch })
  assert.equal(calls[0].url, '/api/widget/replies')
  assert.deepEqual(calls[0].body, { content: 'x', client_id: 'c-1' })
})

test('a lost response is retried with the same client_id and makes one reply', async () => {
  const { fetch, calls, rows } = fakeFetch(['lost', 'down', 'ok'])
  const row = await send({ getToken: () => 'tok', content: 'once', fetch, retryMin: 1 })
  assert.equal(calls.length, 3)
  assert.equal(new Set(calls.map((c) => c.body.client_id)).size, 1)
  assert.equal(rows.size, 1)
  assert.equal(row.content, 'once')
})

test('gives up after `retries` network errors, with the last error', async () => {
  const { fetch, calls } = fakeFetch(['down', 'down', 'down'])
  await assert.rejects(send({ getToken: () => 'tok', content: 'x', fetch, retries: 2, retryMin: 1 }), /fetch failed/)
  assert.equal(calls.length, 3)
})

test('5xx is retried; a first 401 is retried with a fresh token', async () => {
  {
    const { fetch, calls } = fakeFetch([503, 502, 'ok'])
    await send({ getToken: () => 'tok', content: 'x', fetch, retryMin: 1 })
    assert.equal(calls.length, 3)
  }
  {
    let n = 0
    const { fetch, calls } = fakeFetch([401, 'ok'])
    await send({ getToken: () => `tok-${++n}`, content: 'x', fetch, retryMin: 1 })
    assert.deepEqual(calls.map((c) => c.init.headers.authorization), ['Bearer tok-1', 'Bearer tok-2'])
  }
  {
    const { fetch, calls } = fakeFetch([401, 401, 'ok'])
    await assert.rejects(send({ getToken: () => 'tok', content: 'x', fetch, retryMin: 1 }), { status: 401 })
    assert.equal(calls.length, 2)
  }
})

test('client errors are not retried and carry the status and the server message', async () => {
  for (const status of [400, 413, 422, 429]) {
    const { fetch, calls } = fakeFetch([status])
    await assert.rejects(send({ getToken: () => 'tok', content: 'x', clientId: 'c-9', fetch, retryMin: 1 }), (e) => {
      assert.equal(e.status, status)
      assert.equal(e.message, `status ${status}`)
      assert.equal(e.clientId, 'c-9')
      return true
    })
    assert.equal(calls.length, 1, `status ${status} must not be retried`)
  }
})

test('an error body that is not JSON still gives a useful error', async () => {
  const fetch = async () => ({ ok: false, status: 400, json: async () => { throw new SyntaxError('bad') } })
  await assert.rejects(send({ getToken: () => 'tok', content: 'x', fetch }), { status: 400, message: 'HTTP 400' })
})

test('no token means no request', async () => {
  const { fetch, calls } = fakeFetch()
  await assert.rejects(send({ getToken: async () => null, content: 'x', fetch }), { status: 401 })
  assert.equal(calls.length, 0)
})

test('client ids are UUIDs even without crypto.randomUUID (insecure contexts)', async () => {
  const original = crypto.randomUUID
  const { fetch, calls } = fakeFetch()
  try {
    crypto.randomUUID = undefined
    for (let i = 0; i < 50; i++) await send({ getToken: () => 'tok', content: 'x', fetch })
  } finally {
    crypto.randomUUID = original
  }
  for (const c of calls) assert.match(c.body.client_id, UUID)
  assert.equal(new Set(calls.map((c) => c.body.client_id)).size, 50)
})
