// A runner that speaks the real protocol (PROTOCOL.md) to the real control plane and does nothing else: on `dispatch`
// it has a long-lived `sh` (started beforehand) run `bash -c true`, says `started`, then `exit` with no output. No
// record, workspace, wrapper or output. bench/floor.mjs runs it against the real control plane, to tell the control
// plane's share of the fixed cost from the runner's. Arguments: the runner URL; the runner token in TENDRIL_RUNNER_TOKEN.
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import WebSocket from "ws";

const socket = new WebSocket(process.argv[2], { headers: { authorization: `Bearer ${process.env.TENDRIL_RUNNER_TOKEN}` } });
const helper = spawn("sh", ["-c", 'while read -r id; do bash -c true & echo "$id $!"; wait $!; echo "$id $?"; done'], { stdio: ["pipe", "pipe", "inherit"] });
const running = new Map();
const send = (message) => socket.send(JSON.stringify(message));
createInterface({ input: helper.stdout }).on("line", (line) => {
  const [id, number] = line.split(" ");
  const script = running.get(id);
  if (!script.started) {
    script.started = true;
    send({ type: "started", ticket: script.ticket, fence: script.fence, pid: Number(number) });
  } else {
    running.delete(id);
    send({ type: "exit", ticket: script.ticket, fence: script.fence, lineCount: 0, outcome: { kind: "exited", code: Number(number) } });
  }
});
let next = 0;
const { version } = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
socket.on("open", () => send({ type: "hello", protocol: 2, runnerId: randomUUID(), version, capabilities: [], inventory: [] }));
socket.on("message", (data, binary) => {
  if (binary) return;
  const text = String(data);
  if (text === "pong") return;
  const message = JSON.parse(text);
  if (message.type === "welcome") process.stdout.write("connected\n");
  if (message.type !== "dispatch") return;
  const id = String((next += 1));
  running.set(id, { ticket: message.ticket, fence: message.fence, started: false });
  helper.stdin.write(`${id}\n`);
});
const ping = setInterval(() => socket.send("ping"), 10_000);
// Stopped (SIGTERM) or disconnected: it exits once its helper is gone, so that it leaves nothing behind.
const stop = () => {
  clearInterval(ping);
  helper.on("exit", () => process.exit(0));
  helper.kill("SIGKILL");
};
socket.on("close", stop);
process.on("SIGTERM", stop);
