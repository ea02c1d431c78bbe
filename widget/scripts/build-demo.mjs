// Builds the demo's dashboard page (demo/dashboard/app.jsx, React) into one script:
// `node scripts/build-demo.mjs <out dir>` writes <out dir>/dashboard.js, which the broadcaster
// serves at /demo/dashboard/app.js when started with `--demo --demo-assets <out dir>`.
// React's development build: StrictMode then mounts every card twice, as in development.
import { fileURLToPath } from 'node:url'
import { resolve } from 'node:path'

const out = resolve(process.argv[2] || fileURLToPath(new URL('../../target/demo-dashboard', import.meta.url)))
let esbuild
try {
  esbuild = await import('esbuild')
} catch {
  console.error('build-demo: esbuild is missing; run `npm ci` in widget/ first')
  process.exit(1)
}
await esbuild.build({
  entryPoints: [fileURLToPath(new URL('../demo/dashboard/app.jsx', import.meta.url))],
  bundle: true,
  format: 'esm',
  target: 'es2020',
  jsx: 'automatic',
  define: { 'process.env.NODE_ENV': '"development"' },
  outfile: resolve(out, 'dashboard.js'),
  logLevel: 'warning',
})
console.log(`build-demo: ${resolve(out, 'dashboard.js')}`)
