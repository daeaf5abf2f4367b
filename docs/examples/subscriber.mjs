// A task-manager subscriber in JavaScript, with the official NATS client (nats.js v3):
// reads a task's state from the TM_TASKS key-value bucket, then follows its changes from the
// TM_EVENTS stream (its history first, then live) until the task ends.
//
//   npm install @nats-io/transport-node@3 @nats-io/jetstream@3 @nats-io/kv@3
//   node subscriber.mjs nats://127.0.0.1:4222 <task_id>
//
// Prints one JSON line per event ({"kind", "state", "stage", "progress"}) and, at the end, the task's
// entry as the bucket holds it ({"entry": {...}}).
import { connect } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";

const [server, taskId] = process.argv.slice(2);
const ENDED = new Set(["SUCCESS", "FAILURE", "TIMEOUT", "REVOKED"]);

const nc = await connect({ servers: server });
const tasks = await new Kvm(nc).open("TM_TASKS");
const now = await tasks.get(taskId);
console.log(JSON.stringify({ stored: now ? now.json().state : null }));

const js = jetstream(nc);
const consumer = await js.consumers.get("TM_EVENTS", { filter_subjects: [`task.changes.${taskId}.>`] });
const events = await consumer.consume();
for await (const msg of events) {
  const e = msg.json();
  console.log(JSON.stringify({ kind: e.kind, state: e.state, stage: e.stage ?? null, progress: e.progress }));
  if (e.kind === "state" && ENDED.has(e.state)) break;
}
const entry = await tasks.get(taskId);
console.log(JSON.stringify({ entry: entry.json() }));
await nc.close();
