// Starts the pinned Durable Streams reference server for durable_streams.testing.
// Prints exactly one line on stdout: "READY <base url>". All server logging goes to stderr.
// Exits when its stdin closes, so a killed parent never leaves a server behind.
const toStderr = (...args) => process.stderr.write(args.map(String).join(" ") + "\n")
console.log = toStderr
console.info = toStderr
console.debug = toStderr
console.warn = toStderr

const { DurableStreamTestServer } = await import("@durable-streams/server")

const options = {
  host: process.env.DS_HOST || "127.0.0.1",
  port: Number(process.env.DS_PORT || 0),
  compression: process.env.DS_COMPRESSION === "1",
}
if (process.env.DS_DATA_DIR) options.dataDir = process.env.DS_DATA_DIR
if (process.env.DS_LONG_POLL_MS) options.longPollTimeout = Number(process.env.DS_LONG_POLL_MS)
// Webhook subscriptions (PROTOCOL §6.2, §7.1) are off unless asked for; there is no CLI flag.
if (process.env.DS_WEBHOOKS === "1") options.webhooks = true

const server = new DurableStreamTestServer(options)
const url = await server.start()
process.stdout.write(`READY ${url}\n`)

let stopping = false
async function stop(code) {
  if (stopping) return
  stopping = true
  const timer = setTimeout(() => process.exit(code), 2000)
  timer.unref()
  try { await server.stop() } catch (err) { toStderr("stop failed:", err) }
  process.exit(code)
}
process.stdin.on("end", () => stop(0))
process.stdin.on("error", () => stop(0))
process.stdin.resume()
process.on("SIGTERM", () => stop(0))
process.on("SIGINT", () => stop(0))
