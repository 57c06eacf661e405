// A test process that forgets `stop()`: it starts Tendril and a script, then simply ends. Its exit must take every
// process it started with it (../consumer.test.ts looks for them afterwards).
import { startTendril } from "tendril/testing";

const tendril = await startTendril({ machines: ["web-01"] });
// A script that keeps starting processes: some are forked while the exit handler looks for what to kill.
const run = await tendril.machine("web-01").start({ scriptBody: "while :; do sleep 600 & echo forked; sleep 0.005; done" });
// Running before the process ends, and forking: its first lines have arrived.
let forked = 0;
for await (const _line of run.logs()) if (++forked === 10) break;
console.log("started", run.ticket);
