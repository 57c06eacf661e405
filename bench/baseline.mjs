// The baseline of dispatch and handoff: a small Node process (its own memory only, not the control plane's or the
// benchmark's) that spawns bare `bash -c true` on request. Each line on stdin is a count; it spawns that many, one
// after another, and answers one line: a JSON array of their times in ms, from spawn() to the exit event.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";

function spawnTrue() {
  return new Promise((resolve, reject) => {
    const child = spawn("bash", ["-c", "true"], { stdio: "ignore" });
    child.on("error", reject);
    child.on("exit", resolve);
  });
}

for await (const line of createInterface({ input: process.stdin })) {
  const times = [];
  for (let i = 0; i < Number(line); i += 1) {
    const started = performance.now();
    await spawnTrue();
    times.push(performance.now() - started);
  }
  process.stdout.write(`${JSON.stringify(times)}\n`);
}
