// Fails when threadcast.js minifies to more than 4096 bytes (esbuild --minify, ESM).
import { readFile } from 'node:fs/promises'
import { gzipSync } from 'node:zlib'

const LIMIT = 4096
const file = new URL('../threadcast.js', import.meta.url)

let esbuild
try {
  esbuild = await import('esbuild')
} catch {
  console.error('size: esbuild is missing; run `npm ci` in widget/ first')
  process.exit(1)
}

const src = await readFile(file, 'utf8')
const { code } = await esbuild.transform(src, { minify: true, format: 'esm', target: 'es2020' })
const bytes = Buffer.byteLength(code)
const gz = gzipSync(code, { level: 9 }).length
const ok = bytes <= LIMIT
console.log(`size: threadcast.js minified ${bytes} bytes (gzip ${gz}), limit ${LIMIT}: ${ok ? 'ok' : 'TOO BIG'}`)
if (!ok) process.exit(1)
