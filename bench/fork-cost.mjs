// How long `child_process.spawn` blocks the event loop, against the resident memory of the process that calls
// it. On Linux, libuv starts a child with fork(), which copies the page tables of the whole process: the cost
// grows with the memory the caller has touched. This is what limits the mutex handoff (docs/benchmarks.md).
//
//   node bench/fork-cost.mjs
import { spawn } from "node:child_process";
import { percentile } from "./stack.mjs";

const RUNS = 30;
const ballast = [];
console.log("| resident memory of the caller | spawn() call, p50 | whole spawn of /bin/true, p50 |");
console.log("|---|---|---|");
for (const extraMb of [0, 50, 100, 200]) {
  while (ballast.length < extraMb) ballast.push(Buffer.alloc(1024 * 1024, 1));
  const call = [];
  const whole = [];
  for (let i = 0; i < RUNS; i += 1) {
    const started = performance.now();
    const child = spawn("/bin/true", [], { stdio: "ignore" });
    call.push(performance.now() - started);
    await new Promise((resolve) => child.on("exit", resolve));
    whole.push(performance.now() - started);
  }
  const rss = process.memoryUsage().rss / 1e6;
  console.log(`| ${rss.toFixed(0)} MB | ${percentile(call, 50).toFixed(2)} ms | ${percentile(whole, 50).toFixed(2)} ms |`);
}
