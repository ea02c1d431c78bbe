// Size budgets of threadcast.js, minified with esbuild (ESM): what an end user's widget loads
// (`subscribe` and `send`, the rest shaken off by the bundler) must stay within 4096 bytes; the
// whole module, with the dashboard's shared connection (`followThread`), within 8192.
import { gzipSync } from 'node:zlib'
import { fileURLToPath } from 'node:url'

const BUDGETS = [
  ['the widget (subscribe, send)', 'export { subscribe, send } from "./threadcast.js"', 4096],
  ['the whole module', 'export * from "./threadcast.js"', 8192],
]

let esbuild
try {
  esbuild = await import('esbuild')
} catch {
  console.error('size: esbuild is missing; run `npm ci` in widget/ first')
  process.exit(1)
}

let ok = true
for (const [what, entry, limit] of BUDGETS) {
  const out = await esbuild.build({
    stdin: { contents: entry, resolveDir: fileURLToPath(new URL('..', import.meta.url)), loader: 'js' },
    bundle: true,
    minify: true,
    format: 'esm',
    target: 'es2020',
    write: false,
  })
  const code = out.outputFiles[0].text
  const bytes = Buffer.byteLength(code)
  const gz = gzipSync(code, { level: 9 }).length
  const fits = bytes <= limit
  ok &&= fits
  console.log(`size: ${what}: minified ${bytes} bytes (gzip ${gz}), limit ${limit}: ${fits ? 'ok' : 'TOO BIG'}`)
}
if (!ok) process.exit(1)
