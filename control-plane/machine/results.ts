/** What the machine object's RPC methods return: a value, or an API error for the edge to send. */

/** An API error decided inside the object. */
export interface RpcError {
  ok: false;
  status: 400 | 404 | 409 | 413 | 503;
  code: string;
  message: string;
}

/** A successful RPC result. */
export interface RpcOk<T> {
  ok: true;
  value: T;
}

/** Either a value or an API error. */
export type RpcResult<T> = RpcOk<T> | RpcError;

/** Wraps a value. */
export function ok<T>(value: T): RpcOk<T> {
  return { ok: true, value };
}

/** Builds an API error. */
export function fail(status: RpcError["status"], code: string, message: string): RpcError {
  return { ok: false, status, code, message };
}

/** The error every call on a never-registered machine gets. */
export function unknownMachine(machineId: string): RpcError {
  return fail(404, "unknown_machine", `Machine ${machineId} is not registered; create it with POST /api/v1/machines/${machineId}/runner-token.`);
}

/** The error for a ticket the machine does not know. */
export function unknownScript(ticket: string): RpcError {
  return fail(404, "unknown_script", `No script with ticket ${ticket} exists on this machine.`);
}

/** The error for a request whose changes could not be stored (nothing of it was kept; it may be retried). */
export function storageUnavailable(): RpcError {
  return fail(503, "storage_unavailable", "The control plane could not store this change and kept nothing of it; try again.");
}
