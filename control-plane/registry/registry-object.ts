/**
 * RegistryObject: what the control plane knows of the whole fleet, in one object named "registry" (its storage is
 * `registry-store.ts`):
 * - the registered machines and their runner tokens' hashes, so that a runner socket with a bad token is refused
 *   at the edge without waking any machine object;
 * - a summary row per machine, pushed by each machine object as it changes (`report`), so that the fleet list is
 *   one query whatever the fleet's size; and the fleet's counters;
 * - the fleet-wide audit feed: the machines' events (pushed with their summaries) and the registry's own
 *   (removals, operators), kept for `AUDIT_RETENTION_MS` (90 days by default), pruned by the alarm;
 * - the operators, with their tokens hashed;
 * - for the console: failed sign-ins per client (to slow down guessing) and signed-out sessions (`console-store.ts`).
 * Every call runs in one storage transaction.
 */
import { DurableObject } from "cloudflare:workers";
import type { AuditFeed, FleetStatus, OperatorRole, OperatorView } from "../../shared/api.js";
import type { Env } from "../env.js";
import type { MachineReport, ReportAck, ReportEvent } from "../machine/report.js";
import * as consoleStore from "./console-store.js";
import { feedCursor, machineCursor } from "./cursors.js";
import * as store from "./registry-store.js";

export type { OperatorIdentity, TokenVerdict } from "./registry-store.js";

/** How long the feed keeps an event by default: 90 days. */
export const DEFAULT_AUDIT_RETENTION_MS = 90 * 24 * 60 * 60 * 1000;
/** How often the alarm prunes events past retention (at most), and how many go at once. */
const PRUNE_INTERVAL_MS = 60 * 60 * 1000;
const PRUNE_BATCH = 5_000;

/** The audit retention from the Worker's vars; a missing or invalid value keeps the default. */
export function auditRetentionMs(vars: { AUDIT_RETENTION_MS?: string | undefined }): number {
  const value = vars.AUDIT_RETENTION_MS === undefined ? NaN : Number(vars.AUDIT_RETENTION_MS);
  return Number.isSafeInteger(value) && value > 0 ? value : DEFAULT_AUDIT_RETENTION_MS;
}

/** The fleet's registry. */
export class RegistryObject extends DurableObject<Env> {
  private readonly retentionMs: number;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.retentionMs = auditRetentionMs(env);
    ctx.storage.transactionSync(() => store.migrate(ctx.storage.sql));
    void ctx.blockConcurrencyWhile(async () => {
      if ((await ctx.storage.getAlarm()) === null) await ctx.storage.setAlarm(Date.now() + this.pruneIntervalMs());
    });
  }

  private get sql() {
    return this.ctx.storage.sql;
  }

  private tx<T>(body: () => T): T {
    return this.ctx.storage.transactionSync(body);
  }

  // ---------------------------------------------------------------- runner tokens

  /** Records a machine (if new) with the hash of its newly issued runner token and its incarnation. */
  async setRunnerToken(machineId: string, tokenHash: string, incarnation: string | null = null): Promise<void> {
    this.tx(() => store.setRunnerToken(this.sql, machineId, tokenHash, Date.now(), incarnation));
  }

  /** Revokes a machine's runner token; false for an unknown machine. */
  async revokeRunnerToken(machineId: string): Promise<boolean> {
    return this.tx(() => store.revokeRunnerToken(this.sql, machineId));
  }

  /** Whether a runner token (by its hash) may reach the machine's object. */
  async checkRunnerToken(machineId: string, tokenHash: string): Promise<store.TokenVerdict> {
    return store.checkRunnerToken(this.sql, machineId, tokenHash);
  }

  /** Records the hash of a token the machine object accepted, for a machine registered before hashes were kept. */
  async adoptRunnerToken(machineId: string, tokenHash: string): Promise<void> {
    store.adoptRunnerToken(this.sql, machineId, tokenHash);
  }

  // ---------------------------------------------------------------- the fleet

  /** A machine's report: its summary (kept when newer) and its audit events (kept once each). */
  async report(report: MachineReport): Promise<ReportAck> {
    return this.tx(() => store.applyReport(this.sql, report));
  }

  /**
   * One page of the fleet list with its counts (`after`: the previous page's last machine id), as the JSON text of a
   * `MachineList`: the edge sends it as it is, so that a page of summaries is serialized once, not cloned and
   * serialized again.
   */
  async listMachines(query: { limit: number; after: string | null; prefix: string | null; status: FleetStatus | null }): Promise<string> {
    const page = store.listPage(this.sql, { ...query, now: Date.now() });
    const nextCursor = page.last === null ? null : machineCursor(page.last);
    return `{"machines":${page.machinesJson},"nextCursor":${JSON.stringify(nextCursor)},"counts":${JSON.stringify(page.counts)}}`;
  }

  /** Forgets a removed machine and records `machine-removed` (with the events its object handed over). */
  async removeMachine(machineId: string, actor: string, handed: { incarnation: string; events: ReportEvent[] } | null): Promise<boolean> {
    return this.tx(() => store.removeMachine(this.sql, machineId, actor, handed, Date.now()));
  }

  /** One page of the audit feed, newest first. */
  async feed(query: { machineId: string | null; limit: number; before: { at: number; id: number } | null }): Promise<AuditFeed> {
    const page = store.feedPage(this.sql, { ...query, cutoff: Date.now() - this.retentionMs });
    return { events: page.events, nextCursor: page.last === null ? null : feedCursor(page.last) };
  }

  // ---------------------------------------------------------------- operators

  /** Adds an operator or replaces its token (the caller made the token and hashed it). */
  async addOperator(input: { name: string; role: OperatorRole; tokenHash: string; expiresAt: number }, actor: string): Promise<OperatorView> {
    return this.tx(() => store.addOperator(this.sql, input, actor, Date.now()));
  }

  /** Every operator, never a token. */
  async listOperators(): Promise<OperatorView[]> {
    return store.listOperators(this.sql);
  }

  /** Revokes an operator; false when none has that name. */
  async removeOperator(name: string, actor: string): Promise<boolean> {
    return this.tx(() => store.removeOperator(this.sql, name, actor, Date.now()));
  }

  /** The operator an operator token (by its hash) belongs to, or null (unknown, revoked or expired). */
  async authenticateOperator(tokenHash: string): Promise<store.OperatorIdentity | null> {
    return this.tx(() => store.authenticateOperator(this.sql, tokenHash, Date.now()));
  }

  /** The current generation of an operator's token (null: removed or expired), for console sessions to check. */
  async operatorGeneration(name: string): Promise<number | null> {
    return store.operatorGeneration(this.sql, name, Date.now());
  }

  // ---------------------------------------------------------------- console sessions

  /**
   * Starts a console sign-in attempt of a client (see console-store.ts): answers how many ms it must wait before
   * trying again, or 0 when it may go on (the attempt then counts as a failure until `consoleSignInSucceeded`).
   */
  async beginConsoleSignIn(client: string): Promise<number> {
    return this.tx(() => consoleStore.beginSignIn(this.sql, client, Date.now()));
  }

  /** A client signed in to the console with a good token: its failures are forgotten. */
  async consoleSignInSucceeded(client: string): Promise<void> {
    this.tx(() => consoleStore.signInSucceeded(this.sql, client));
  }

  /**
   * Whether a console session may go on: not signed out, and, for an operator's session, made with the operator's
   * current token (not removed, replaced or expired since).
   */
  async consoleSessionLive(sessionId: string, operator: { name: string; generation: number } | null): Promise<boolean> {
    if (consoleStore.sessionEnded(this.sql, sessionId)) return false;
    return operator === null || store.operatorGeneration(this.sql, operator.name, Date.now()) === operator.generation;
  }

  /** Ends a console session (signed out): its cookie is refused from now on. */
  async endConsoleSession(sessionId: string, expiresAt: number): Promise<void> {
    this.tx(() => consoleStore.endSession(this.sql, sessionId, expiresAt));
  }

  // ---------------------------------------------------------------- the alarm

  /** Prunes audit events past retention, a batch at a time, and what the console no longer needs. */
  override async alarm(): Promise<void> {
    this.tx(() => consoleStore.pruneConsole(this.sql, Date.now()));
    const removed = this.tx(() => store.pruneEvents(this.sql, Date.now() - this.retentionMs, PRUNE_BATCH));
    await this.ctx.storage.setAlarm(Date.now() + (removed === PRUNE_BATCH ? 1_000 : this.pruneIntervalMs()));
  }

  private pruneIntervalMs(): number {
    return Math.min(PRUNE_INTERVAL_MS, this.retentionMs);
  }
}
