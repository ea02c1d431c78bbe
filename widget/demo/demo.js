// The two-pane demo: one feedback thread seen by the agency's dashboard and by the end user's
// widget. Each pane has its own token and its own subscription through threadcast.js.
import { subscribe, send } from '/widget/threadcast.js'

const params = new URLSearchParams(location.search)
const STATUS_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  unauthorized: 'Unauthorized',
}
const ROLES = ['agency', 'end_user']

const $ = (sel, root = document) => root.querySelector(sel)

function showError(message) {
  const el = $('#demo-error')
  el.textContent = message
  el.hidden = false
}

/** The thread: `?feedbackId=` (and optional `?title=`), or the server's demo thread. */
async function loadThread() {
  const id = params.get('feedbackId')
  if (id) return { feedbackId: id, title: params.get('title') || null }
  const res = await fetch('/demo/thread')
  if (!res.ok) throw new Error(`GET /demo/thread answered ${res.status}`)
  return res.json()
}

/** A getToken for one pane: a fresh demo token on every call (counted in data-token-fetches). */
function tokenSource(feedbackId, role, pane) {
  return async () => {
    const q = new URLSearchParams({ feedbackId, role })
    if (params.get('ttl')) q.set('ttl', params.get('ttl')) // short-lived tokens, for tests
    const res = await fetch(`/demo/token?${q}`)
    pane.dataset.tokenFetches = String(Number(pane.dataset.tokenFetches) + 1)
    if (!res.ok) throw new Error(`GET /demo/token answered ${res.status}`)
    return (await res.json()).token
  }
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' })
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' })

function initials(name) {
  return (name || '?')
    .split(/\s+/)
    .filter(Boolean)
    .slice(0, 2)
    .map((w) => w[0].toUpperCase())
    .join('')
}

/** One `<li class="reply">`, created or brought up to date. */
function renderReply(li, reply, role) {
  const type = reply.author_type === 'agency' ? 'agency' : 'end_user'
  const name = reply.author_name || (type === 'agency' ? 'Agency' : 'End user')
  li.className = `reply ${type}${type === role ? ' mine' : ''}`
  li.dataset.id = reply.id
  li.dataset.seq = String(reply.thread_seq)
  li.dataset.authorType = type
  const when = new Date(reply.created_at)
  const valid = !Number.isNaN(when.getTime())
  li.replaceChildren()
  const avatar = document.createElement('span')
  avatar.className = 'avatar'
  avatar.setAttribute('aria-hidden', 'true')
  avatar.textContent = initials(name)
  const bubble = document.createElement('div')
  bubble.className = 'bubble'
  const meta = document.createElement('div')
  meta.className = 'meta'
  const author = document.createElement('span')
  author.className = 'reply-author'
  author.textContent = name
  const time = document.createElement('time')
  time.className = 'reply-time'
  if (valid) {
    time.dateTime = when.toISOString()
    time.title = dateFormat.format(when)
    time.textContent = timeFormat.format(when)
  }
  meta.append(author, time)
  const content = document.createElement('p')
  content.className = 'reply-content'
  content.textContent = reply.content // text, never HTML
  bubble.append(meta, content)
  li.append(avatar, bubble)
  li._reply = reply
}

function setupPane(role, feedbackId) {
  const pane = $(`#pane-${role}`)
  const list = $(`#replies-${role}`)
  const badge = $(`#status-${role}`)
  const form = $(`#compose-${role}`)
  const input = $(`#input-${role}`)
  const button = $(`#send-${role}`)
  const error = $(`#error-${role}`)
  const authorName = $('.author-name', pane).textContent
  const getToken = tokenSource(feedbackId, role, pane)
  const items = new Map() // reply id -> <li>

  const render = (replies) => {
    const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 48
    let grewMine = false
    const seen = new Set()
    for (const reply of replies) {
      seen.add(reply.id)
      let li = items.get(reply.id)
      if (!li) {
        li = document.createElement('li')
        items.set(reply.id, li)
        if (reply.author_type === role) grewMine = true
      }
      if (li._reply !== reply) renderReply(li, reply, role)
      list.append(li) // moves it into seq order if it is already there
    }
    for (const [id, li] of items) {
      if (!seen.has(id)) {
        li.remove()
        items.delete(id)
      }
    }
    pane.dataset.count = String(replies.length)
    pane.classList.toggle('has-replies', replies.length > 0)
    if (nearBottom || grewMine) list.scrollTop = list.scrollHeight
  }

  const setStatus = (status) => {
    pane.dataset.status = status
    badge.dataset.status = status
    badge.textContent = STATUS_TEXT[status] || status
  }

  const sub = subscribe({
    baseUrl: '',
    feedbackId,
    getToken,
    onChange: render,
    onStatus: setStatus,
  })

  const post = (content, clientId) => send({ baseUrl: '', getToken, content, authorName, clientId })

  const sync = () => {
    button.disabled = form.dataset.sending === 'true' || input.value.trim() === ''
  }
  input.addEventListener('input', sync)
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault()
      form.requestSubmit()
    }
  })
  form.addEventListener('submit', async (e) => {
    e.preventDefault()
    const content = input.value.trim()
    if (!content || form.dataset.sending === 'true') return
    form.dataset.sending = 'true'
    error.hidden = true
    sync()
    try {
      await post(content)
      input.value = ''
    } catch (err) {
      error.textContent = err.status ? `Not sent (${err.status}): ${err.message}` : `Not sent: ${err.message}`
      error.hidden = false
    } finally {
      form.dataset.sending = 'false'
      sync()
      input.focus()
    }
  })

  return { role, sub, getToken, send: post }
}

async function main() {
  let thread
  try {
    thread = await loadThread()
  } catch (err) {
    showError(`Cannot load the demo thread: ${err.message}. Is the broadcaster running with --demo?`)
    return
  }
  const { feedbackId } = thread
  if (thread.title) {
    $('#thread-title').textContent = thread.title
    document.title = `${thread.title} · threadcast demo`
  }
  $('#thread-id').textContent = feedbackId
  document.body.dataset.feedbackId = feedbackId

  const panes = Object.fromEntries(ROLES.map((role) => [role, setupPane(role, feedbackId)]))

  // For browser tests: e.g. `await threadcastDemo.panes.end_user.send('hi', '<uuid>')` twice.
  window.threadcastDemo = { feedbackId, title: thread.title, panes }
  document.body.dataset.ready = 'true'
}

main()
