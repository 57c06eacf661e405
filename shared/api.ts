/**
 * The HTTP API's request schemas, response types and limits (docs/api.md). The control plane validates
 * with these; the SDK and CLI use the same types.
 */
import { z } from "zod";
import { Ticket } from "./ids.js";

/** Limits from the contract. */
export const LIMITS = {
  /** Largest `scriptBody`, in UTF-8 bytes. */
  scriptBodyBytes: 1024 * 1024,
  /** Largest whole request body, in bytes. */
  requestBytes: 8 * 1024 * 1024,
  /** Most files per script. */
  files: 100,
  /** Longest `waitMs`. */
  waitMs: 30_000,
  /** Most log lines in one status page. */
  logPageLines: 10_000,
  /** A status page (GET or DELETE) is cut so that its JSON answer stays under this many bytes. */
  logPageBytes: 4 * 1024 * 1024,
  /** Most scripts listed in a machine view. */
  viewScripts: 100,
  /** Longest duration a request may ask for (`mutexTimeoutMs`, a cancel's `abandonAfterMs`): 30 days. */
  durationMs: 30 * 24 * 60 * 60 * 1000,
} as const;

/** A duration in ms: a non-negative integer of at most 30 days, so that every deadline stays a valid date. */
const DurationMs = z.int().min(0).max(LIMITS.durationMs, `must be at most ${LIMITS.durationMs} ms (30 days)`);

/** The mutex name used when a request names none. */
export const DEFAULT_MUTEX_NAME = "RunningScript";

const FileName = z
  .string()
  .min(1)
  .max(255)
  .check((ctx) => {
    const name = ctx.value;
    if (name === "." || name === ".." || /[\\/\0]/.test(name)) {
      ctx.issues.push({
        code: "custom",
        input: name,
        message: "must be a plain file name (no '/', '\\', NUL, '.' or '..')",
      });
    }
  });

const Base64 = z
  .string()
  .regex(/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/, "must be valid base64");

const EnvName = z
  .string()
  .min(1)
  .max(1024)
  .regex(/^[^=\0]+$/, "environment variable names must not contain '=' or NUL");

const ScriptFile = z.strictObject({ name: FileName, contents: Base64 });

/** Body of `POST /api/v1/machines/{machineId}/scripts`, with the contract's defaults applied. */
export const StartScriptRequest = z.strictObject({
  ticket: Ticket.optional(),
  scriptBody: z.string().refine((v) => !v.includes("\0"), "scriptBody must not contain NUL characters"),
  shell: z.enum(["bash", "sh", "pwsh"]).default("bash"),
  arguments: z
    .array(z.string().refine((v) => !v.includes("\0"), "arguments must not contain NUL characters"))
    .max(10_000)
    .default([]),
  environment: z
    .record(EnvName, z.string().refine((v) => !v.includes("\0"), "environment values must not contain NUL characters"))
    .default({}),
  files: z
    .array(ScriptFile)
    .max(LIMITS.files, `at most ${LIMITS.files} files`)
    .default([])
    .refine((files) => new Set(files.map((f) => f.name)).size === files.length, "file names must be unique"),
  isolation: z.enum(["full", "none"]).default("full"),
  mutexName: z.string().min(1).max(256).default(DEFAULT_MUTEX_NAME),
  mutexTimeoutMs: DurationMs.default(0),
  taskId: z.string().min(1).max(256).optional(),
  waitMs: z.int().min(0).max(LIMITS.waitMs).default(0),
});
/** A validated start request. */
export type StartScriptRequest = z.infer<typeof StartScriptRequest>;
/** A start request as a caller writes it (defaults optional). */
export type StartScriptInput = z.input<typeof StartScriptRequest>;

/** What the runner needs to run a script: the part of the start request that reaches the machine. */
export const ScriptPayload = z.strictObject({
  scriptBody: z.string(),
  shell: z.enum(["bash", "sh", "pwsh"]),
  arguments: z.array(z.string()),
  environment: z.record(z.string(), z.string()),
  files: z.array(ScriptFile),
});
/** The runnable part of a script. */
export type ScriptPayload = z.infer<typeof ScriptPayload>;

/** Optional body of the cancel call. */
export const CancelRequest = z.strictObject({ abandonAfterMs: DurationMs.optional() });
/** Optional body of the abandon call. */
export const AbandonRequest = z.strictObject({ killProcess: z.boolean().optional() });

/** Parses a non-negative integer query parameter; `undefined` when absent, an error string when bad. */
export function parseQueryInt(raw: string | undefined, name: string, max?: number): number | undefined | { error: string } {
  if (raw === undefined) return undefined;
  if (!/^\d{1,15}$/.test(raw)) return { error: `${name} must be a non-negative integer` };
  const value = Number(raw);
  if (max !== undefined && value > max) return { error: `${name} must be at most ${max}` };
  return value;
}

/** Turns the first zod issue into one clear sentence naming the field. */
export function describeZodError(error: z.ZodError): string {
  const issue = error.issues[0];
  if (!issue) return "The request is invalid.";
  const path = issue.path.length ? issue.path.map(String).join(".") : "body";
  if (issue.code === "invalid_key") return `${path}: ${issue.issues[0]?.message ?? issue.message}.`;
  if (issue.code === "unrecognized_keys") {
    const where = issue.path.length ? `${path}` : "the request";
    return `Unknown field(s) in ${where}: ${issue.keys.join(", ")}.`;
  }
  return `${path}: ${issue.message}.`;
}

/** The three log sources. */
export type LogSource = "stdout" | "stderr" | "debug";

/** One stored log line. */
export interface LogLine {
  sequence: number;
  source: LogSource;
  text: string;
  occurred: string;
}

/** Script states. */
export type ScriptState = "pending" | "running" | "complete";

/** A script's status as the API returns it. */
export interface ScriptStatus {
  ticket: string;
  state: ScriptState;
  exitCode: number | null;
  logs: LogLine[];
  nextLogSequence: number;
  hasMoreLogs: boolean;
}

/** A script as listed in a machine view. */
export interface ScriptSummary {
  ticket: string;
  state: ScriptState;
  taskId?: string;
  isolation: "full" | "none";
  mutexName: string;
  createdAt: string;
  startedAt?: string;
  completedAt?: string;
  exitCode?: number | null;
}

/** The runner part of a machine view. */
export interface RunnerView {
  connected: boolean;
  version: string | null;
  connectedAt: string | null;
  lastSeenAt: string | null;
  capabilities: string[];
}

/** One named mutex in a machine view. */
export interface MutexView {
  name: string;
  mode: "exclusive" | "shared" | "free";
  holders: string[];
  waiting: string[];
}

/** An abandoned process that may still be running. */
export interface AbandonedView {
  ticket: string;
  pid: number | null;
  abandonedAt: string;
}

/** `GET /api/v1/machines/{machineId}`. */
export interface MachineView {
  machineId: string;
  runner: RunnerView;
  mutexes: MutexView[];
  scripts?: ScriptSummary[];
  abandoned: AbandonedView[];
}

/** The error body of every 4xx. */
export interface ApiErrorBody {
  error: { code: string; message: string };
}
