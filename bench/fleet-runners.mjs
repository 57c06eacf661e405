// Drives many runner connections from one process with the runner's own code (dist/runner.js). Reads
// {url, workDir, machines: [{machineId, token}]} on stdin; prints "all connected" once every runner is
// connected; stops them all on SIGTERM.
import { join } from "node:path";
import { startRunner } from "../dist/runner.js";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { url, workDir, machines } = JSON.parse(input);
const quiet = { info() {}, warn() {}, error: (message) => process.stderr.write(`${message}\n`) };
const handles = await Promise.all(
  machines.map(({ machineId, token }) => startRunner({ url, machineId, token, workDir: join(workDir, machineId), logger: quiet })),
);
const check = setInterval(() => {
  if (handles.every((handle) => handle.connected)) {
    clearInterval(check);
    process.stdout.write("all connected\n");
  }
}, 10);
process.on("SIGTERM", async () => {
  clearInterval(check);
  await Promise.all(handles.map((handle) => handle.stop()));
  process.exit(0);
});
