// Model management with the official `ollama` npm package against a running Herd with a
// store: pull from a registry (http: insecure), create from the pulled model with a system
// prompt, push the new model back, delete it. Prints one JSON object of what it saw;
// tests/clients/test_ollama_js.py asserts on it.
// Usage: node models.mjs <base-url> <registry host:port>
import { Ollama } from 'ollama'

const [host, registry] = process.argv.slice(2)
const ollama = new Ollama({ host })
const source = `${registry}/library/tiny:latest`
const created = `${registry}/library/tiny-brief:latest`
const out = {}

// A failing call is recorded, not fatal: the test reports which step broke and how.
async function step(name, fn) {
  try {
    out[name] = await fn()
  } catch (error) {
    out[name] = { thrown: String(error?.message ?? error), status: error?.status_code ?? null }
  }
}

// A streamed call: ollama-js itself throws unless the stream ends with status "success".
async function statuses(stream) {
  const seen = []
  for await (const part of stream) seen.push(part.status)
  return seen
}

await step('pull', async () =>
  statuses(await ollama.pull({ model: source, insecure: true, stream: true })))

await step('create', async () =>
  statuses(await ollama.create({ model: created, from: source, system: 'Be brief.', stream: true })))

// /api/create answers success once the manifest is written; the workers serve the new model
// after their next rescan (a heartbeat), which /api/tags and /api/show follow
await step('listed', async () => {
  for (let tries = 0; tries < 100; tries++) {
    const found = (await ollama.list()).models.find((m) => m.model === created)
    if (found) return found.digest
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  return null
})

await step('show', async () => (await ollama.show({ model: created })).system ?? null)

await step('push', async () =>
  statuses(await ollama.push({ model: created, insecure: true, stream: true })))

await step('pushNotStreamed', async () =>
  (await ollama.push({ model: created, insecure: true })).status)

await step('delete', async () => (await ollama.delete({ model: created })).status)

await step('listedAfterDelete', async () =>
  (await ollama.list()).models.some((m) => m.model === created))

await step('pushDeleted', async () => {
  await statuses(await ollama.push({ model: created, insecure: true, stream: true }))
  return 'no error'
})

process.stdout.write(JSON.stringify(out) + '\n')
