// Drives a running Herd with the official `ollama` npm package and prints one JSON object
// of what it saw; tests/clients/test_ollama_js.py asserts on it.
// Usage: node client.mjs <base-url> <model>
import { Ollama } from 'ollama'

const [host, model] = process.argv.slice(2)
const ollama = new Ollama({ host })
const out = {}

// A failing call is recorded, not fatal: the test reports which step broke and how.
async function step(name, fn) {
  try {
    out[name] = await fn()
  } catch (error) {
    out[name] = { thrown: String(error?.message ?? error), status: error?.status_code ?? null }
  }
}

await step('chatStream', async () => {
  const parts = []
  const stream = await ollama.chat({
    model,
    messages: [{ role: 'user', content: 'Say hello.' }],
    stream: true,
  })
  for await (const part of stream) parts.push(part)
  const last = parts[parts.length - 1]
  return {
    count: parts.length,
    text: parts.map((p) => p.message.content).join(''),
    doneFlags: parts.map((p) => p.done),
    doneReason: last.done_reason,
    evalCount: last.eval_count ?? null,
    role: parts[0].message.role,
  }
})

await step('chat', async () => {
  const response = await ollama.chat({ model, messages: [{ role: 'user', content: 'Say hello.' }] })
  return { text: response.message.content, done: response.done }
})

await step('generate', async () => {
  const response = await ollama.generate({ model, prompt: 'Say hello.' })
  return { text: response.response, done: response.done, doneReason: response.done_reason }
})

await step('list', async () => {
  const response = await ollama.list()
  return response.models.map((m) => ({ name: m.name, model: m.model, size: m.size }))
})

await step('show', async () => {
  const response = await ollama.show({ model })
  return {
    hasModelInfo: 'model_info' in response && typeof response.model_info === 'object',
    capabilities: response.capabilities ?? null,
    family: response.details?.family ?? null,
  }
})

await step('embed', async () => {
  const response = await ollama.embed({ model, input: ['a', 'b'] })
  return { count: response.embeddings.length, length: response.embeddings[0].length }
})

await step('version', async () => (await ollama.version()).version)

await step('unknownModel', async () => {
  await ollama.chat({ model: 'nope:1b', messages: [{ role: 'user', content: 'x' }] })
  return 'no error'
})

await step('unknownModelStreamed', async () => {
  const stream = await ollama.generate({ model: 'nope:1b', prompt: 'x', stream: true })
  for await (const _ of stream) {
    // drain
  }
  return 'no error'
})

process.stdout.write(JSON.stringify(out) + '\n')
