/**
 * The isolation mutex: a named reader/writer lock with a strict FIFO queue. `full` isolation takes it
 * exclusively, `none` takes it shared. Pure data and functions; no platform imports.
 */

/** How a script holds (or wants) its mutex. */
export type LockMode = "exclusive" | "shared";

/** One named mutex: who holds it and who waits, oldest first. */
export interface MutexState {
  name: string;
  /** Tickets holding the mutex, with their modes. */
  holders: Map<string, LockMode>;
  /** Tickets waiting, first come first served. */
  queue: Array<{ ticket: string; mode: LockMode }>;
}

/** Creates an empty mutex. */
export function newMutex(name: string): MutexState {
  return { name, holders: new Map(), queue: [] };
}

/** True when a request in `mode` could be granted given the current holders. */
export function compatible(mutex: MutexState, mode: LockMode): boolean {
  if (mode === "exclusive") return mutex.holders.size === 0;
  for (const held of mutex.holders.values()) if (held === "exclusive") return false;
  return true;
}

/** The mode the mutex is held in right now. */
export function heldMode(mutex: MutexState): LockMode | "free" {
  if (mutex.holders.size === 0) return "free";
  for (const held of mutex.holders.values()) if (held === "exclusive") return "exclusive";
  return "shared";
}

/**
 * Grants waiters from the head of the queue while they are compatible with the holders, and stops at
 * the first that is not: a waiting exclusive request holds back every later shared one (no overtaking).
 * Returns the granted tickets in grant order.
 */
export function grantWaiters(mutex: MutexState): string[] {
  const granted: string[] = [];
  while (mutex.queue.length > 0) {
    const head = mutex.queue[0]!;
    if (!compatible(mutex, head.mode)) break;
    mutex.queue.shift();
    mutex.holders.set(head.ticket, head.mode);
    granted.push(head.ticket);
  }
  return granted;
}

/**
 * Adds a request at the back of the queue and grants what can be granted. A new request is granted at
 * once only when nobody waits ahead of it and it is compatible with the holders.
 */
export function requestMutex(mutex: MutexState, ticket: string, mode: LockMode): boolean {
  mutex.queue.push({ ticket, mode });
  return grantWaiters(mutex).includes(ticket);
}

/** Removes a ticket as holder or waiter; returns what that removal lets through. */
export function leaveMutex(mutex: MutexState, ticket: string): string[] {
  if (!mutex.holders.delete(ticket)) {
    const index = mutex.queue.findIndex((w) => w.ticket === ticket);
    if (index < 0) return [];
    mutex.queue.splice(index, 1);
    // Only a change at the head can let anyone through.
    if (index !== 0) return [];
  }
  return grantWaiters(mutex);
}

/** True when nobody holds or waits for the mutex. */
export function isIdle(mutex: MutexState): boolean {
  return mutex.holders.size === 0 && mutex.queue.length === 0;
}
