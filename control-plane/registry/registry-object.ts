/**
 * RegistryObject: the registered machines and their runner tokens' hashes, so that `GET /api/v1/machines` need
 * not know every machine object's name in advance, and a runner socket with a bad token is refused at the edge
 * without waking any machine object. One instance, named "registry"; its storage is `registry-store.ts`.
 */
import { DurableObject } from "cloudflare:workers";
import type { Env } from "../env.js";
import * as store from "./registry-store.js";

export type { TokenVerdict } from "./registry-store.js";

/** Lists machines and checks runner tokens. */
export class RegistryObject extends DurableObject<Env> {
  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    ctx.storage.transactionSync(() => store.migrate(ctx.storage.sql));
  }

  /** Records a machine (if new) with the hash of its newly issued runner token. */
  async setRunnerToken(machineId: string, tokenHash: string): Promise<void> {
    store.setRunnerToken(this.ctx.storage.sql, machineId, tokenHash, Date.now());
  }

  /** Whether a runner token (by its hash) may reach the machine's object. */
  async checkRunnerToken(machineId: string, tokenHash: string): Promise<store.TokenVerdict> {
    return store.checkRunnerToken(this.ctx.storage.sql, machineId, tokenHash);
  }

  /** Records the hash of a token the machine object accepted, for a machine registered before hashes were kept. */
  async adoptRunnerToken(machineId: string, tokenHash: string): Promise<void> {
    store.adoptRunnerToken(this.ctx.storage.sql, machineId, tokenHash);
  }

  /** Every registered machine id, sorted. */
  async list(): Promise<string[]> {
    return store.listMachines(this.ctx.storage.sql);
  }
}
