/** The real `tendril runner` command for runner tests, as a process of its own (build it with ../helpers/built-cli.ts). */
import { spawn, type ChildProcess } from "node:child_process";
import { readFile } from "node:fs/promises";

/** A `tendril runner` process in its own process group, with what it printed. */
export interface RunnerProcess {
  pid: number;
  child: ChildProcess;
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts `node <bin> runner --url U --machine M --work-dir D [flags]` with the token in the environment. */
export function startRunnerProcess(bin: string, url: string, machineId: string, token: string, workDir: string, flags: string[] = []): RunnerProcess {
  const child = spawn(process.execPath, [bin, "runner", "--url", url, "--machine", machineId, "--work-dir", workDir, ...flags], {
    env: { ...process.env, TENDRIL_RUNNER_TOKEN: token },
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let all = "";
  child.stdout!.on("data", (chunk: Buffer) => (all += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (all += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on("exit", (code, signal) => resolve({ code, signal }));
  });
  if (child.pid === undefined) throw new Error("could not start the runner process");
  return { pid: child.pid, child, output: () => all, exited };
}

/** A process's resident memory now and at its peak, in bytes (`VmRSS` and `VmHWM` of /proc/<pid>/status). */
export async function residentMemory(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const field = (name: string): number => {
    const match = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status);
    if (match === null) throw new Error(`no ${name} in /proc/${pid}/status`);
    return Number(match[1]) * 1024;
  };
  return { rss: field("VmRSS"), peak: field("VmHWM") };
}
