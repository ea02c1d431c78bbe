// The demo's agency dashboard: one live card per feedback thread of a project, every card
// through `useThreadReplies`, so that all of them share one connection to the broadcaster; and
// beside them the end user's widget on the selected thread (its own stream, as on a client's
// site). Built by `npm run build:demo` (esbuild, React's development build, so that StrictMode
// mounts every card twice as it does in development).
import { StrictMode, useEffect, useState, useSyncExternalStore } from 'react'
import { createRoot } from 'react-dom/client'
import { useThreadReplies } from '../../react/index.js'
import { send, subscribe } from '../../threadcast.js'

const params = new URLSearchParams(location.search)
const ttl = params.get('ttl')

// The page's dashboard connections, counted where they are made: the tests check there is one.
const stats = { opened: 0, open: 0, tokens: 0 }
const listeners = new Set()
const changed = () => listeners.forEach((l) => l())
let snapshot = { ...stats }
const useStats = () =>
  useSyncExternalStore(
    (l) => (listeners.add(l), () => listeners.delete(l)),
    () => snapshot,
  )
const count = (fn) => {
  fn()
  snapshot = { ...stats }
  changed()
}
class CountingEventSource extends EventSource {
  constructor(url, init) {
    super(url, init)
    count(() => (stats.opened++, stats.open++))
  }
  close() {
    if (!this.counted) {
      this.counted = true
      count(() => stats.open--)
    }
    super.close()
  }
}

let projectId = null
/** The project's agency token: one for every card (they share the connection, and its scope). */
const getToken = async () => {
  const q = new URLSearchParams({ projectId })
  if (ttl) q.set('ttl', ttl)
  const res = await fetch(`/demo/dashboard/token?${q}`)
  count(() => stats.tokens++)
  if (!res.ok) throw new Error(`GET /demo/dashboard/token answered ${res.status}`)
  return (await res.json()).token
}

function Card({ feedbackId, title, selected, onSelect }) {
  const { replies, status } = useThreadReplies(feedbackId, { getToken, EventSource: CountingEventSource })
  const [flash, setFlash] = useState(false)
  useEffect(() => {
    if (!replies.length) return
    setFlash(true)
    const t = setTimeout(() => setFlash(false), 1000)
    return () => clearTimeout(t)
  }, [replies.length])
  return (
    <article
      className={`card${selected ? ' selected' : ''}${flash ? ' flash' : ''}`}
      data-card=""
      data-thread={feedbackId}
      data-status={status}
      data-count={replies.length}
      onClick={onSelect}
    >
      <header>
        <h3>{title || 'Untitled feedback'}</h3>
        <span className={`dot ${status}`} title={status} />
      </header>
      <ol>
        {replies.map((r) => (
          <li key={r.id} data-id={r.id} data-seq={r.thread_seq} className={r.author_type}>
            <b>{r.author_name || r.author_type}</b> <span className="content">{r.content}</span>
          </li>
        ))}
      </ol>
      <footer>
        <span>{replies.length} {replies.length == 1 ? 'reply' : 'replies'}</span>
        <span>{status}</span>
      </footer>
    </article>
  )
}

/** The end user's widget on the client's site: its own token, its own stream. */
function EndUserWidget({ feedbackId, title }) {
  const [replies, setReplies] = useState([])
  const [draft, setDraft] = useState('')
  const getUserToken = async () => {
    const res = await fetch(`/demo/token?${new URLSearchParams({ feedbackId, role: 'end_user' })}`)
    return (await res.json()).token
  }
  useEffect(() => {
    setReplies([])
    const sub = subscribe({ baseUrl: '', feedbackId, getToken: getUserToken, onChange: setReplies })
    return () => sub.unsubscribe()
  }, [feedbackId])
  const submit = async (e) => {
    e.preventDefault()
    if (!draft.trim()) return
    await send({ baseUrl: '', getToken: getUserToken, content: draft.trim(), authorName: 'Maya' })
    setDraft('')
  }
  return (
    <aside className="widget" id="end-user" data-thread={feedbackId} data-count={replies.length}>
      <header>
        <h2>End user widget</h2>
        <p className="who">On the client’s site, as Maya · {title}</p>
      </header>
      <ol>
        {replies.map((r) => (
          <li key={r.id} className={r.author_type}>
            <span className="author">{r.author_name}</span>
            {r.content}
          </li>
        ))}
      </ol>
      <form onSubmit={submit}>
        <textarea id="end-user-input" rows="2" value={draft} onChange={(e) => setDraft(e.target.value)} placeholder="Write a reply…" />
        <button id="end-user-send" type="submit">Send</button>
      </form>
    </aside>
  )
}

function Dashboard({ project }) {
  const [cards, setCards] = useState(project.threads)
  const [mounted, setMounted] = useState(true)
  const [selected, setSelected] = useState(0)
  const s = useStats()
  useEffect(() => {
    // For browser tests (and the curious): unmount or remount every card, or move one.
    window.threadcastDashboard = {
      projectId: project.projectId,
      threads: project.threads,
      stats: () => ({ ...stats }),
      unmountAll: () => setMounted(false),
      mountAll: () => setMounted(true),
      moveCard: (i, feedbackId) =>
        setCards((cs) => cs.map((c, j) => (j === i ? { ...c, feedbackId } : c))),
    }
    document.body.dataset.ready = 'true'
  }, [project])
  const current = cards[selected] || cards[0]
  return (
    <>
      <header className="top">
        <span className="brand">
          threadcast<span className="tag">agency dashboard</span>
        </span>
        <span className="project">project {project.projectId}</span>
        <span className="conn" id="connections" data-open={s.open} data-opened={s.opened}>
          {s.open} stream connection{s.open == 1 ? '' : 's'} · {mounted ? cards.length : 0} live cards
        </span>
        <button id="toggle" onClick={() => setMounted((m) => !m)}>
          {mounted ? 'Unmount cards' : 'Mount cards'}
        </button>
      </header>
      <main className="layout">
        <section className="cards" id="cards">
          {mounted &&
            cards.map((c, i) => (
              <Card key={i} {...c} selected={i === selected} onSelect={() => setSelected(i)} />
            ))}
        </section>
        {current && <EndUserWidget feedbackId={current.feedbackId} title={current.title} />}
      </main>
    </>
  )
}

async function main() {
  const res = await fetch('/demo/dashboard/project')
  if (!res.ok) {
    const el = document.getElementById('demo-error')
    el.textContent = `Cannot load the demo project (${res.status}). Load sql/demo.sql and run the broadcaster with --demo.`
    el.hidden = false
    return
  }
  const project = await res.json()
  projectId = project.projectId
  createRoot(document.getElementById('root')).render(
    <StrictMode>
      <Dashboard project={project} />
    </StrictMode>,
  )
}

main()
