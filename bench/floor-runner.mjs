// The runner of bench/floor.mjs: the least a runner can do. One WebSocket to its object; on `start` it runs
// `bash -c true` and reports the exit code. No record, no workspace, no wrapper, no output. With `--helper`, a
// long-lived `sh` started beforehand runs each one (no fork of Node per script); without, Node spawns it.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import WebSocket from "ws";

const socket = new WebSocket(process.argv[2]);
const report = (id, code) => socket.send(JSON.stringify({ exit: id, code }));
let run = (id) => spawn("bash", ["-c", "true"], { stdio: "ignore" }).on("exit", (code) => report(id, code));
let stop = () => process.exit(0);
if (process.argv[3] === "--helper") {
  const helper = spawn("sh", ["-c", 'while read -r id; do bash -c true; echo "$id $?"; done'], { stdio: ["pipe", "pipe", "inherit"] });
  createInterface({ input: helper.stdout }).on("line", (line) => report(...line.split(" ").map(Number)));
  run = (id) => helper.stdin.write(`${id}\n`);
  // It exits once its helper is gone, so that it leaves nothing behind.
  stop = () => {
    helper.on("exit", () => process.exit(0));
    helper.kill("SIGKILL");
  };
}
socket.on("open", () => process.stdout.write("connected\n"));
socket.on("message", (data) => run(JSON.parse(String(data)).start));
socket.on("close", () => stop());
process.on("SIGTERM", () => stop());
