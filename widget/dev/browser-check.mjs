// Drives the demo page in headless Chromium against the mock broadcaster (dev/mock-server.mjs)
// and checks the client end to end with the browser's own EventSource: live, send, exactly
// once, a dropped stream, an expired token, and it writes demo/screenshot.png.
//
//   node --experimental-websocket dev/browser-check.mjs      (npm run check:browser)
//
// A developer's check of the widget alone. The project's real browser tests run against the
// real broadcaster and PostgreSQL (see the repository's README).

import { spawn } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import assert from 'node:assert/strict'
import { start } from './mock-server.mjs'

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const SHOT = new URL('../demo/screenshot.png', import.meta.url)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function launch() {
  const dir = await mkdtemp(join(tmpdir(), 'tc-chromium-'))
  const proc = spawn(
    CHROMIUM,
    ['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--no-default-browser-check', '--hide-scrollbars', `--user-data-dir=${dir}`, '--remote-debugging-port=0', 'about:blank'],
    { stdio: 'ignore' },
  )
  let port
  for (let i = 0; i < 200 && !port; i++) {
    await sleep(50)
    port = await readFile(join(dir, 'DevToolsActivePort'), 'utf8').catch(() => null)
  }
  if (!port) throw new Error('chromium did not start')
  const [p, path] = port.trim().split('\n')
  const ws = new WebSocket(`ws://127.0.0.1:${p}${path}`)
  await new Promise((resolve, reject) => {
    ws.onopen = resolve
    ws.onerror = reject
  })
  let next = 0
  const waiting = new Map()
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data)
    const w = waiting.get(msg.id)
    if (!w) return
    waiting.delete(msg.id)
    msg.error ? w.reject(new Error(msg.error.message)) : w.resolve(msg.result)
  }
  const call = (method, params = {}, sessionId) =>
    new Promise((resolve, reject) => {
      const id = ++next
      waiting.set(id, { resolve, reject })
      ws.send(JSON.stringify({ id, method, params, sessionId }))
    })
  const close = async () => {
    ws.close()
    proc.kill()
    await sleep(200)
    await rm(dir, { recursive: true, force: true })
  }
  return { call, close }
}

async function page(browser, url) {
  const { targetId } = await browser.call('Target.createTarget', { url: 'about:blank' })
  const { sessionId } = await browser.call('Target.attachToTarget', { targetId, flatten: true })
  const call = (m, p) => browser.call(m, p, sessionId)
  await call('Emulation.setDeviceMetricsOverride', { width: 1280, height: 760, deviceScaleFactor: 1, mobile: false })
  await call('Page.enable')
  await call('Page.navigate', { url })
  const evaluate = async (expression) => {
    const r = await call('Runtime.evaluate', { expression, awaitPromise: true, returnByValue: true })
    if (r.exceptionDetails) throw new Error(r.exceptionDetails.exception?.description || r.exceptionDetails.text)
    return r.result.value
  }
  const waitFor = async (expression, what, ms = 5000) => {
    const end = Date.now() + ms
    for (;;) {
      const v = await evaluate(expression).catch(() => null)
      if (v) return v
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${expression}`)
      await sleep(25)
    }
  }
  // Browsers allow 6 HTTP/1.1 connections per origin, and each demo page holds two streams.
  const close = () => browser.call('Target.closeTarget', { targetId })
  return { call, evaluate, waitFor, close }
}

const replies = (role) => `[...document.querySelectorAll('#replies-${role} .reply')].map(li => ({ id: li.dataset.id, seq: +li.dataset.seq, type: li.dataset.authorType, content: li.querySelector('.reply-content').textContent }))`
const status = (role) => `document.querySelector('#pane-${role}').dataset.status`

async function main() {
  const server = await start(0)
  const base = `http://127.0.0.1:${server.address().port}`
  const browser = await launch()
  const results = []
  const check = async (name, fn) => {
    const t = Date.now()
    try {
      await fn()
      results.push(true)
      console.log(`ok - ${name} (${Date.now() - t} ms)`)
    } catch (e) {
      results.push(false)
      console.log(`not ok - ${name}\n  ${e.stack}`)
    }
  }
  const post = (path, body, method = 'POST') => fetch(base + path, { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }).then((r) => r.json())

  try {
    await check('writes demo/screenshot.png (a fresh thread, before the other checks)', async () => {
      const s = await page(browser, `${base}/demo/`)
      await s.waitFor(`${status('agency')} === 'live' && ${status('end_user')} === 'live' && ${replies('agency')}.length === 3`, 'live')
      await s.evaluate(`(() => { const t = document.querySelector('#input-agency'); t.value = 'Thanks! We are moving it above the fold; the fix ships on Friday.'; t.dispatchEvent(new Event('input')); document.querySelector('#send-agency').click() })()`)
      await s.waitFor(`${replies('end_user')}.length === 4`, 'the reply')
      await s.evaluate(`(() => { const t = document.querySelector('#input-end_user'); t.value = 'Perfect, thank you!'; t.dispatchEvent(new Event('input')); })()`)
      await sleep(400) // let the arrival animation finish
      const { data } = await s.call('Page.captureScreenshot', { format: 'png' })
      await writeFile(SHOT, Buffer.from(data, 'base64'))
      await s.close()
    })

    const p = await page(browser, `${base}/demo/`)

    await check('both panes go live and show the thread in seq order', async () => {
      await p.waitFor(`document.body.dataset.ready === 'true'`, 'ready')
      await p.waitFor(`${status('agency')} === 'live' && ${status('end_user')} === 'live'`, 'live')
      await p.waitFor(`${replies('agency')}.length === 4 && ${replies('end_user')}.length === 4`, '4 replies')
      const a = await p.evaluate(replies('agency'))
      assert.deepEqual(a.map((r) => r.seq), [1, 2, 3, 4])
      assert.deepEqual(await p.evaluate(replies('end_user')), a)
      assert.equal(await p.evaluate(`document.querySelector('#status-agency').textContent`), 'Live')
    })

    await check('a reply typed in the end user pane shows up in both panes, once', async () => {
      await p.evaluate(`(() => { const t = document.querySelector('#input-end_user'); t.value = 'Found it, thanks — it is below the fold on Safari.'; t.dispatchEvent(new Event('input')); document.querySelector('#send-end_user').click() })()`)
      await p.waitFor(`${replies('agency')}.some(r => r.content.startsWith('Found it'))`, 'reply in the agency pane')
      await p.waitFor(`${replies('end_user')}.some(r => r.content.startsWith('Found it'))`, 'reply in the end user pane')
      assert.equal(await p.evaluate(`document.querySelector('#input-end_user').value`), '')
      const mine = await p.evaluate(`document.querySelector('#replies-end_user .reply:last-child').classList.contains('mine')`)
      assert.equal(mine, true)
    })

    await check('a retried POST with the same client_id makes one reply', async () => {
      const id = 'a1b2c3d4-0000-4000-8000-000000000001'
      const [r1, r2] = await p.evaluate(`(async () => { const s = threadcastDemo.panes.agency.send; const a = await s('We will move it up in the next release.', '${id}'); const b = await s('We will move it up in the next release.', '${id}'); return [a.id, b.id] })()`)
      assert.equal(r1, id)
      assert.equal(r2, id)
      await p.waitFor(`${replies('end_user')}.some(r => r.id === '${id}')`, 'the reply')
      await sleep(200)
      assert.equal((await p.evaluate(replies('end_user'))).filter((r) => r.id === '${id}' || r.id === id).length, 1)
      assert.equal((await p.evaluate(replies('agency'))).filter((r) => r.id === id).length, 1)
    })

    await check('an insert from elsewhere (the psql stand-in), an edit and a delete', async () => {
      const row = await post('/dev/replies', { author_type: 'agency', author_name: 'psql', content: 'hello from SQL' })
      await p.waitFor(`${replies('end_user')}.some(r => r.id === '${row.id}')`, 'the insert', 1000)
      await post(`/dev/replies/${row.id}`, { content: 'hello from SQL (edited)' }, 'PATCH')
      await p.waitFor(`${replies('agency')}.some(r => r.content === 'hello from SQL (edited)')`, 'the edit', 1000)
      assert.equal((await p.evaluate(replies('agency'))).filter((r) => r.id === row.id).length, 1)
      await post(`/dev/replies/${row.id}`, {}, 'DELETE')
      await p.waitFor(`!${replies('agency')}.some(r => r.id === '${row.id}') && !${replies('end_user')}.some(r => r.id === '${row.id}')`, 'the delete', 1000)
    })

    await check('dropped streams resume without losing or doubling', async () => {
      await post('/dev/drop', {})
      const row = await post('/dev/replies', { author_type: 'end_user', author_name: 'Maya', content: 'sent while the streams were down' })
      await p.waitFor(`${replies('agency')}.some(r => r.id === '${row.id}') && ${replies('end_user')}.some(r => r.id === '${row.id}')`, 'the missed reply', 5000)
      await p.waitFor(`${status('agency')} === 'live' && ${status('end_user')} === 'live'`, 'live again')
      for (const role of ['agency', 'end_user']) {
        const list = await p.evaluate(replies(role))
        assert.equal(new Set(list.map((r) => r.id)).size, list.length, 'no duplicates')
        assert.deepEqual(list.map((r) => r.seq), [...list.map((r) => r.seq)].sort((a, b) => a - b))
      }
    })

    await check('expired tokens are refreshed through getToken and nothing is lost', async () => {
      // ttl=1: too short for a proactive refresh, so the token simply expires. After a drop the
      // browser retries with the old URL, gets a 401, and the client asks for a new token.
      const q = await page(browser, `${base}/demo/?ttl=1`)
      await q.waitFor(`${status('end_user')} === 'live'`, 'live')
      const before = await q.evaluate(`+document.querySelector('#pane-end_user').dataset.tokenFetches`)
      await sleep(1500)
      await post('/dev/drop', {})
      const row = await post('/dev/replies', { author_type: 'agency', author_name: 'Studio North', content: 'sent while the token was expired' })
      await q.waitFor(`${replies('end_user')}.some(r => r.id === '${row.id}')`, 'the reply', 8000)
      const after = await q.evaluate(`+document.querySelector('#pane-end_user').dataset.tokenFetches`)
      assert.ok(after > before, `getToken called again (${before} -> ${after})`)
      const list = await q.evaluate(replies('end_user'))
      assert.equal(new Set(list.map((r) => r.id)).size, list.length)
      await q.close()
      // ttl=3: refreshed proactively (a fifth of the lifetime before exp) while live.
      const r = await page(browser, `${base}/demo/?ttl=3`)
      await r.waitFor(`${status('agency')} === 'live'`, 'live')
      await r.waitFor(`+document.querySelector('#pane-agency').dataset.tokenFetches >= 2`, 'a proactive refresh', 5000)
      assert.equal(await r.evaluate(status('agency')), 'live')
      await r.close()
    })

    await check('a thread shows only its own replies', async () => {
      const other = '0b9a7a52-3d1c-4a8e-9f4e-2d7c1b6a5e02'
      const q = await page(browser, `${base}/demo/?feedbackId=${other}&title=Dark%20mode`)
      await q.waitFor(`${status('end_user')} === 'live'`, 'live')
      await post('/dev/replies', { content: 'only for the first thread' })
      await post('/dev/replies', { feedbackId: other, content: 'for the other thread' })
      await q.waitFor(`${replies('end_user')}.some(r => r.content === 'for the other thread')`, 'its own reply')
      assert.equal((await q.evaluate(replies('end_user'))).some((r) => r.content === 'only for the first thread'), false)
      await q.close()
    })

  } finally {
    await browser.close()
    server.close()
    server.closeAllConnections?.()
  }
  const passed = results.filter(Boolean).length
  console.log(`${passed} passed, ${results.length - passed} failed`)
  process.exit(passed === results.length ? 0 : 1)
}

await main()
