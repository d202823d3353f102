// The TypeScript @durable-streams/state package (pinned in package.json), driven from
// Python for tests/test_state_interop.py and benchmarks/state.py.
//
//   node harness.mjs '<task json>'      prints one line: RESULT <json>
//
// Tasks:
//   {"mode": "read", "url": U}       read stream U from the beginning with the package's own
//                                    client (@durable-streams/client, its dependency), apply
//                                    every event to MaterializedState as StreamDB does (a
//                                    reset clears; other controls are hints), report the state
//                                    and the time from the first request to the last event.
//   {"mode": "apply", "file": F, "repeat": R}
//                                    apply the JSON array of events in file F (parsed
//                                    first, untimed) to a new MaterializedState, R times;
//                                    report the best time (the pure materialisation).
//   {"mode": "write", "url": U, "ops": [...]}
//                                    build events with createStateSchema's helpers (one
//                                    collection per type, primaryKey "id", a pass-through
//                                    Standard Schema validator), append each to U with the
//                                    client, and report the events.
//
// The state is reported as {"types": [...], "entries": {type: [[key, value], ...]}}, in Map
// order, so that key order can be compared too.
import { readFileSync } from "node:fs";
import { DurableStream, stream } from "@durable-streams/client";
import { MaterializedState, createStateSchema, isControlEvent } from "@durable-streams/state";

function report(result) {
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
}

function applyLikeStreamDB(state, event) {
  if (isControlEvent(event)) {
    if (event.headers.control === "reset") state.clear();
    return;
  }
  state.apply(event);
}

function dump(state) {
  const entries = {};
  for (const type of state.types) entries[type] = Array.from(state.getType(type).entries());
  return { types: state.types, entries };
}

// A Standard Schema (v1) validator that accepts every value unchanged.
const anything = {
  "~standard": { version: 1, vendor: "durable-streams-python-tests", validate: (value) => ({ value }) },
};

async function read(task) {
  const state = new MaterializedState();
  let count = 0;
  const t0 = performance.now();
  const res = await stream({ url: task.url, offset: "-1", live: false });
  // (res.closed may resolve before the subscriber has seen the data: wait for the
  // batch that says up to date.)
  await new Promise((resolve, reject) => {
    res.subscribeJson((batch) => {
      for (const item of batch.items) applyLikeStreamDB(state, item);
      count += batch.items.length;
      if (batch.upToDate || batch.streamClosed) resolve();
    });
    res.closed.catch(reject);
  });
  const seconds = (performance.now() - t0) / 1000;
  const out = task.summary ? { size: [...state.types].reduce((n, t) => n + state.getType(t).size, 0) } : dump(state);
  report({ ...out, count, seconds, node: process.version });
}

async function apply(task) {
  const events = JSON.parse(readFileSync(task.file, "utf8"));
  let best = Infinity;
  let state;
  for (let r = 0; r < (task.repeat ?? 1); r++) {
    state = new MaterializedState();
    const t0 = performance.now();
    for (const event of events) applyLikeStreamDB(state, event);
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  const size = [...state.types].reduce((n, t) => n + state.getType(t).size, 0);
  report({ size, count: events.length, seconds: best, node: process.version });
}

async function write(task) {
  const collections = {};
  for (const op of task.ops) {
    if (op.type && !(op.type in collections)) {
      collections[op.type] = { schema: anything, type: op.type, primaryKey: "id" };
    }
  }
  const schema = createStateSchema(collections);
  const handle = new DurableStream({ url: task.url, contentType: "application/json" });
  const events = [];
  for (const op of task.ops) {
    let event;
    if (op.control) {
      event = { headers: { control: op.control } };
    } else {
      const helpers = schema[op.type];
      const args = { value: op.value, headers: op.headers ?? {} };
      if (op.key !== undefined) args.key = op.key;
      if (op.oldValue !== undefined) args.oldValue = op.oldValue;
      event = helpers[op.op](args);
    }
    events.push(event);
    await handle.append(JSON.stringify(event));
  }
  report({ events });
}

const task = JSON.parse(process.argv[2]);
const run = { read, write, apply }[task.mode];
if (!run) throw new Error(`unknown mode ${task.mode}`);
run(task).catch((error) => {
  report({ error: String(error && error.stack ? error.stack : error) });
  process.exitCode = 1;
});
