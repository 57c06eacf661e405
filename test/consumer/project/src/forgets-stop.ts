// A test process that forgets `stop()`: it starts Tendril and a script, then simply ends. Its exit must take every
// process it started with it (../consumer.test.ts looks for them afterwards).
import { startTendril } from "tendril/testing";

const tendril = await startTendril({ machines: ["web-01"] });
// A script that keeps starting processes: some are forked while the exit handler looks for what to kill.
const run = await tendril.machine("web-01").start({ scriptBody: "while :; do sleep 600 & sleep 0.005; done" });
// Running before the process ends, so that there is a script to clean up, and forking for a while.
for (;;) {
  const status = await run.status();
  if (status.state === "running") break;
  await new Promise((resolve) => setTimeout(resolve, 20));
}
await new Promise((resolve) => setTimeout(resolve, 300));
console.log("started", run.ticket);
