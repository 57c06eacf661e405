// A test process that forgets `stop()`: it starts Tendril and a script, then simply ends. Its exit must take every
// process it started with it (../consumer.test.ts looks for them afterwards).
import { startTendril } from "tendril/testing";

const tendril = await startTendril({ machines: ["web-01"] });
const run = await tendril.machine("web-01").start({ scriptBody: "sleep 600" });
// Running before the process ends, so that there is a script to clean up.
for (;;) {
  const status = await run.status();
  if (status.state === "running") break;
  await new Promise((resolve) => setTimeout(resolve, 20));
}
console.log("started", run.ticket);
