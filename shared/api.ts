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
export const StartScriptRequest = z
  .strictObject({
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
    runTimeoutMs: DurationMs.default(0).meta({
      description: "0 = no limit. A script still running this long after it started is cancelled by the control plane, and abandoned if the cancel has not landed 30 s after the runner's kill grace.",
    }),
    taskId: z.string().min(1).max(256).optional(),
    waitMs: z.int().min(0).max(LIMITS.waitMs).default(0),
  })
  .meta({
    id: "StartScriptRequest",
    example: { ticket: "deploy-42", scriptBody: "./deploy.sh", taskId: "ServerTasks-42", mutexTimeoutMs: 600000, waitMs: 0 },
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

/** Why a person or a task acted, recorded in the audit trail (≤ 500 characters). */
const Reason = z.string().min(1).max(500).meta({ description: "Why, in a few words; recorded in the audit trail and the script's log." });
/** On whose behalf the server acts (server token only; ≤ 200 characters). */
const RequestedBy = z
  .string()
  .min(1)
  .max(200)
  .meta({ description: "The person or task on whose behalf the server token acts, e.g. `alice (ServerTasks-42)`; recorded as the actor `server:<requestedBy>`. An operator token may not send it (403)." });

/** Optional body of the cancel call. */
export const CancelRequest = z
  .strictObject({
    abandonAfterMs: DurationMs.optional().meta({ description: "Abandon the script if it is still not complete this long after the cancel." }),
    reason: Reason.optional(),
    requestedBy: RequestedBy.optional(),
  })
  .meta({ id: "CancelRequest" });
/** Optional body of the abandon call. */
export const AbandonRequest = z
  .strictObject({
    killProcess: z.boolean().optional().meta({ description: "Also ask the runner for a best-effort kill of the process tree." }),
    reason: Reason.optional(),
    requestedBy: RequestedBy.optional(),
  })
  .meta({ id: "AbandonRequest" });

/** An operator's name: 1–64 characters of `[A-Za-z0-9._-]`. */
export const OperatorName = z
  .string()
  .regex(/^(?!\.\.?$)[A-Za-z0-9._-]{1,64}$/, "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-' (and not '.' or '..')")
  .meta({ example: "alice" });
/** What an operator may do: `viewer` reads; `operator` also cancels and abandons. */
export const OperatorRole = z.enum(["viewer", "operator"]).meta({ id: "OperatorRole" });
/** An operator's role. */
export type OperatorRole = z.infer<typeof OperatorRole>;

/** Body of `POST /api/v1/operators`. */
export const AddOperatorRequest = z
  .strictObject({
    name: OperatorName,
    role: OperatorRole,
    expiresInDays: z.int().min(1).max(365).default(90).meta({ description: "1–365 (default 90)." }),
  })
  .meta({ id: "AddOperatorRequest", example: { name: "alice", role: "operator", expiresInDays: 90 } });
/** A validated add-operator request. */
export type AddOperatorRequest = z.infer<typeof AddOperatorRequest>;

/** The statuses the fleet list filters by. */
export const FleetStatus = z.enum(["connected", "disconnected", "busy", "stuck"]).meta({
  id: "FleetStatus",
  description: "`busy`: some mutex is held. `stuck`: something is abandoned-maybe-running, or a holder has run longer than an hour (or past its `runTimeoutMs`).",
});
/** A fleet list filter. */
export type FleetStatus = z.infer<typeof FleetStatus>;

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

// ---------------------------------------------------------------------------------------------------
// Responses. The control plane answers with these shapes, the OpenAPI document describes them (each `.meta({ id })`
// becomes a named component), the SDK validates every answer with them, and the integration tests check every
// answer they receive against them. Objects are not strict: a client must tolerate fields added later.

/** An ISO-8601 time. */
const Iso = z.string().meta({ format: "date-time", example: "2026-12-02T10:15:30.000Z" });

/** The three log sources. */
export const LogSource = z.enum(["stdout", "stderr", "debug"]).meta({
  id: "LogSource",
  description: "`stdout` and `stderr` are the process's streams; `debug` lines are Tendril's own (waiting, cancel, abandon).",
});
/** The three log sources. */
export type LogSource = z.infer<typeof LogSource>;

/** One stored log line. */
export const LogLine = z
  .object({
    sequence: z.int().min(0).meta({ description: "Consecutive from 0 per script; every line has exactly one." }),
    source: LogSource,
    text: z.string().meta({ description: "The line without its newline, decoded as UTF-8 (invalid bytes become U+FFFD)." }),
    occurred: Iso,
  })
  .meta({ id: "LogLine", example: { sequence: 0, source: "stdout", text: "hello", occurred: "2026-12-02T10:15:30.000Z" } });
/** One stored log line. */
export type LogLine = z.infer<typeof LogLine>;

/** Script states. */
export const ScriptState = z.enum(["pending", "running", "complete"]).meta({ id: "ScriptState" });
/** Script states. */
export type ScriptState = z.infer<typeof ScriptState>;

/** What an audit event records. */
export const AuditAction = z
  .enum([
    "cancel",
    "abandon",
    "auto-abandon",
    "mutex-timeout",
    "run-timeout",
    "runner-lost",
    "reattached",
    "kill-requested",
    "runner-token-issued",
    "runner-token-revoked",
    "machine-removed",
    "operator-added",
    "operator-removed",
  ])
  .meta({
    id: "AuditAction",
    description:
      "Script actions: `cancel`, `abandon`, `auto-abandon` (a cancel's `abandonAfterMs` expired), `mutex-timeout`, `run-timeout`, `runner-lost` (-46), `reattached`, `kill-requested`. Administrative ones (`ticket` null): `runner-token-issued`, `runner-token-revoked`, `machine-removed`, `operator-added`, `operator-removed`.",
  });
/** What an audit event records. */
export type AuditAction = z.infer<typeof AuditAction>;

/** One event of a script's audit trail. */
export const AuditEvent = z
  .object({
    at: Iso,
    action: AuditAction,
    actor: z.string().meta({ description: "`server`, `server:<requestedBy>`, `operator:<name>`, or `control-plane` for what it decided by itself." }),
    reason: z.string().nullable(),
  })
  .meta({ id: "AuditEvent", example: { at: "2026-12-02T10:15:30.000Z", action: "abandon", actor: "operator:alice", reason: "stuck in AV scan" } });
/** One event of a script's audit trail. */
export type AuditEvent = z.infer<typeof AuditEvent>;

/** One event of the fleet-wide audit feed. */
export const FeedEvent = AuditEvent.extend({
  machineId: z.string().nullable().meta({ description: "Null for an operator's event." }),
  ticket: Ticket.nullable().meta({ description: "Null for an administrative event." }),
}).meta({ id: "FeedEvent" });
/** One event of the fleet-wide audit feed. */
export type FeedEvent = z.infer<typeof FeedEvent>;

/** `GET /api/v1/audit`. */
export const AuditFeed = z
  .object({
    events: z.array(FeedEvent).meta({ description: "Newest first." }),
    nextCursor: z.string().nullable().meta({ description: "Pass it back as `cursor` for the next (older) page; null at the end." }),
  })
  .meta({ id: "AuditFeed" });
/** `GET /api/v1/audit`. */
export type AuditFeed = z.infer<typeof AuditFeed>;

/** A script's status as the API returns it. */
export const ScriptStatus = z
  .object({
    ticket: Ticket,
    state: ScriptState,
    exitCode: z.int().nullable().meta({ description: "Null until `complete`; negative codes are Tendril's (see the exit codes)." }),
    logs: z.array(LogLine).meta({ description: "One page of lines from `logSequence`, in order." }),
    nextLogSequence: z.int().min(0).meta({ description: "Pass it back as `logSequence` to continue." }),
    hasMoreLogs: z.boolean().meta({ description: "True when lines after this page are already stored." }),
    events: z.array(AuditEvent).meta({ description: "The script's audit trail, oldest first (`[]` when none)." }),
  })
  .meta({
    id: "ScriptStatus",
    example: {
      ticket: "deploy-42",
      state: "complete",
      exitCode: 0,
      logs: [{ sequence: 0, source: "stdout", text: "hello", occurred: "2026-12-02T10:15:30.000Z" }],
      nextLogSequence: 1,
      hasMoreLogs: false,
      events: [],
    },
  });
/** A script's status as the API returns it. */
export type ScriptStatus = z.infer<typeof ScriptStatus>;

/** The final status a live stream ends with: a status without its page of logs. */
export const StreamStatus = ScriptStatus.omit({ logs: true }).meta({ id: "StreamStatus" });
/** The final status of a live stream. */
export type StreamStatus = z.infer<typeof StreamStatus>;

/** A script as listed in a machine view. */
export const ScriptSummary = z
  .object({
    ticket: Ticket,
    state: ScriptState,
    taskId: z.string().optional(),
    isolation: z.enum(["full", "none"]),
    mutexName: z.string(),
    createdAt: Iso,
    startedAt: Iso.optional(),
    completedAt: Iso.optional(),
    exitCode: z.int().nullable().optional(),
    runnerRestarts: z.int().min(0).meta({ description: "How many runner restarts the script lived through (a new runner re-attached to it)." }),
  })
  .meta({ id: "ScriptSummary" });
/** A script as listed in a machine view. */
export type ScriptSummary = z.infer<typeof ScriptSummary>;

/** The runner part of a machine view. */
export const RunnerView = z
  .object({
    connected: z.boolean(),
    draining: z.boolean().meta({ description: "True while a runner that was asked to stop (SIGTERM) takes no new scripts." }),
    version: z.string().nullable(),
    connectedAt: Iso.nullable(),
    lastSeenAt: Iso.nullable().meta({ description: "The runner's last heartbeat or frame." }),
    capabilities: z.array(z.string()).meta({ description: "`script.abandon` when the runner can let go of a process." }),
  })
  .meta({ id: "RunnerView" });
/** The runner part of a machine view. */
export type RunnerView = z.infer<typeof RunnerView>;

/** One named mutex in a machine view. */
export const MutexView = z
  .object({
    name: z.string(),
    mode: z.enum(["exclusive", "shared", "free"]),
    holders: z.array(Ticket),
    waiting: z.array(Ticket).meta({ description: "In the order they will be served." }),
  })
  .meta({ id: "MutexView" });
/** One named mutex in a machine view. */
export type MutexView = z.infer<typeof MutexView>;

/** An abandoned process that may still be running. */
export const AbandonedView = z
  .object({
    ticket: Ticket,
    pid: z.int().min(1).nullable().meta({ description: "Null until the runner has reported the process's pid." }),
    abandonedAt: Iso,
  })
  .meta({ id: "AbandonedProcess" });
/** An abandoned process that may still be running. */
export type AbandonedView = z.infer<typeof AbandonedView>;

/** `GET /api/v1/machines/{machineId}`. */
export const MachineView = z
  .object({
    machineId: z.string(),
    runner: RunnerView,
    mutexes: z.array(MutexView),
    scripts: z.array(ScriptSummary).optional().meta({ description: "Scripts not yet completed-and-deleted, newest first (at most 100)." }),
    abandoned: z.array(AbandonedView).meta({ description: "Processes of abandoned scripts that may still be running." }),
  })
  .meta({ id: "MachineView" });
/** `GET /api/v1/machines/{machineId}`. */
export type MachineView = z.infer<typeof MachineView>;

/** One machine in the fleet list: what the registry keeps of it, pushed by the machine itself as it changes. */
export const MachineSummary = z
  .object({
    machineId: z.string(),
    runner: z.object({
      connected: z.boolean(),
      draining: z.boolean(),
      version: z.string().nullable(),
      lastSeenAt: Iso.nullable(),
    }),
    holders: z.array(Ticket).meta({ description: "Tickets holding any of its mutexes." }),
    heldSince: Iso.nullable().meta({ description: "Since when the longest-running holder holds its mutex." }),
    waiting: z.int().min(0).meta({ description: "Scripts waiting for a mutex." }),
    abandoned: z.int().min(0).meta({ description: "Abandoned processes that may still be running." }),
    updatedAt: Iso.meta({ description: "When the machine last reported this summary." }),
  })
  .meta({ id: "MachineSummary" });
/** One machine in the fleet list. */
export type MachineSummary = z.infer<typeof MachineSummary>;

/** The fleet's counts, kept by the registry (for the `prefix` filter, if any). */
export const FleetCounts = z
  .object({ total: z.int().min(0), connected: z.int().min(0), disconnected: z.int().min(0), busy: z.int().min(0), stuck: z.int().min(0) })
  .meta({ id: "FleetCounts" });
/** The fleet's counts. */
export type FleetCounts = z.infer<typeof FleetCounts>;

/** `GET /api/v1/machines`. */
export const MachineList = z
  .object({
    machines: z.array(MachineSummary).meta({ description: "One page, ordered by machine id." }),
    nextCursor: z.string().nullable().meta({ description: "Pass it back as `cursor` for the next page; null at the end." }),
    counts: FleetCounts,
  })
  .meta({ id: "MachineList" });
/** `GET /api/v1/machines`. */
export type MachineList = z.infer<typeof MachineList>;

/** An operator as listed (never its token). */
export const OperatorView = z
  .object({ name: z.string(), role: OperatorRole, createdAt: Iso, expiresAt: Iso, lastUsedAt: Iso.nullable() })
  .meta({ id: "Operator" });
/** An operator as listed. */
export type OperatorView = z.infer<typeof OperatorView>;

/** `GET /api/v1/operators`. */
export const OperatorList = z.object({ operators: z.array(OperatorView) }).meta({ id: "OperatorList" });

/** `POST /api/v1/operators`: the token is shown once. */
export const AddedOperator = z
  .object({ name: z.string(), role: OperatorRole, token: z.string().meta({ description: "Shown once; stored hashed." }), expiresAt: Iso })
  .meta({ id: "AddedOperator" });
/** `POST /api/v1/operators`. */
export type AddedOperator = z.infer<typeof AddedOperator>;

/** `POST /api/v1/machines/{machineId}/runner-token`. */
export const RegisteredMachine = z
  .object({ machineId: z.string(), runnerToken: z.string().min(1).meta({ description: "Shown once; stored hashed." }) })
  .meta({ id: "RunnerToken", example: { machineId: "web-01", runnerToken: "trt_…" } });
/** `POST /api/v1/machines/{machineId}/runner-token`. */
export type RegisteredMachine = z.infer<typeof RegisteredMachine>;

/** `GET /healthz`. */
export const Health = z.object({ ok: z.literal(true) }).meta({ id: "Health" });

/** The error body of every 4xx (and 503). */
export const ApiErrorBody = z
  .object({
    error: z.object({
      code: z.string().meta({ description: "snake_case; programs branch on it." }),
      message: z.string().meta({ description: "One sentence for people." }),
    }),
  })
  .meta({ id: "Error", example: { error: { code: "unknown_script", message: "No script with ticket t9 exists on this machine." } } });
/** The error body of every 4xx. */
export type ApiErrorBody = z.infer<typeof ApiErrorBody>;
