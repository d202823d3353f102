// The official TypeScript client (@durable-streams/client, pinned in package.json) as a
// baseline for `python3 -m benchmarks`: its IdempotentProducer with default options.
//
//   node bench.mjs '{"url": "http://127.0.0.1:PORT", "mode": "json"|"bytes", "n": 100000,
//                    "size": 100, "runs": 1, "warmup": 10000}'
//
// Every run (and the untimed warm-up) uses a FRESH stream and a FRESH producer id, so the
// server never takes a batch for a duplicate. A run is timed from the first append() to
// flush() resolving. The stream of each timed run is left in place: the Python side reads
// it back to verify the stored count, then deletes it. The last stdout line is
// `RESULT <json>`.
import { randomUUID } from "node:crypto";
import { DurableStream, IdempotentProducer } from "@durable-streams/client";

const CONTENT_TYPES = { json: "application/json", bytes: "application/octet-stream" };

// The same messages as benchmarks/_common.py builds for our client.
function jsonMessages(n, size) {
  const out = new Array(n);
  for (let i = 0; i < n; i++) {
    const head = `{"i": ${i}, "pad": ""}`.length;
    out[i] = `{"i": ${i}, "pad": "${"x".repeat(Math.max(size - head, 0))}"}`;
  }
  return out;
}

function bytesMessages(n, size) {
  const enc = new TextEncoder();
  const out = new Array(n);
  for (let i = 0; i < n; i++) {
    const head = `${String(i).padStart(12, "0")} `;
    const text = (head + "y".repeat(Math.max(size - head.length - 1, 0)) + "\n").slice(0, size);
    out[i] = enc.encode(text);
  }
  return out;
}

async function oneRun(url, mode, messages) {
  const streamUrl = `${url}/bench-ts-${randomUUID().slice(0, 12)}`;
  const stream = await DurableStream.create({ url: streamUrl, contentType: CONTENT_TYPES[mode] });
  const errors = [];
  const producer = new IdempotentProducer(stream, `ts-${randomUUID()}`, {
    onError: (err) => errors.push(String(err && err.message ? err.message : err)),
  });
  const t0 = performance.now();
  for (const m of messages) producer.append(m);
  await producer.flush();
  const seconds = (performance.now() - t0) / 1000;
  await producer.detach();
  return { rate: messages.length / seconds, seconds, stream_url: streamUrl, errors: errors.slice(0, 3),
           error_count: errors.length };
}

async function main() {
  const task = JSON.parse(process.argv[2]);
  const size = task.size ?? 100;
  const build = task.mode === "json" ? jsonMessages : bytesMessages;
  if (!(task.mode in CONTENT_TYPES)) throw new Error(`mode must be json or bytes, not ${task.mode}`);
  if (task.warmup) {
    const w = await oneRun(task.url, task.mode, build(task.warmup, size));
    await DurableStream.delete({ url: w.stream_url });
  }
  const messages = build(task.n, size);
  const runs = [];
  for (let r = 0; r < (task.runs ?? 1); r++) runs.push(await oneRun(task.url, task.mode, messages));
  console.log("RESULT " + JSON.stringify({ runs, node: process.version }));
}

main().catch((err) => {
  console.log("RESULT " + JSON.stringify({ error: String(err && err.stack ? err.stack.split("\n")[0] : err) }));
  process.exitCode = 1;
});
