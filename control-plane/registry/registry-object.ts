/**
 * RegistryObject: the list of registered machines, so that `GET /api/v1/machines` does not need to know
 * every machine object's name in advance. One instance, named "registry".
 */
import { DurableObject } from "cloudflare:workers";
import type { Env } from "../env.js";

/** Lists registered machine ids. */
export class RegistryObject extends DurableObject<Env> {
  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS machines (machine_id TEXT PRIMARY KEY, registered_at INTEGER NOT NULL)");
  }

  /** Records a machine (idempotent). */
  async add(machineId: string): Promise<void> {
    this.ctx.storage.sql.exec("INSERT OR IGNORE INTO machines (machine_id, registered_at) VALUES (?, ?)", machineId, Date.now());
  }

  /** Every registered machine id, sorted. */
  async list(): Promise<string[]> {
    return this.ctx.storage.sql
      .exec<{ machine_id: string }>("SELECT machine_id FROM machines ORDER BY machine_id")
      .toArray()
      .map((row) => row.machine_id);
  }
}
