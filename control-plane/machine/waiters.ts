/**
 * Requests waiting for a script to change (a start with `waitMs`, a live stream): in memory only, as they live
 * no longer than the request that waits. `notify` wakes every waiter of a ticket.
 */

/** Waiters per ticket. */
export class Waiters {
  private readonly byTicket = new Map<string, Set<() => void>>();

  /** Resolves at the next `notify(ticket)`, or after `waitMs`, whichever comes first. */
  wait(ticket: string, waitMs: number): Promise<void> {
    return new Promise((resolve) => {
      let set = this.byTicket.get(ticket);
      if (!set) {
        set = new Set();
        this.byTicket.set(ticket, set);
      }
      const waiters = set;
      const done = () => {
        clearTimeout(timer);
        waiters.delete(done);
        if (waiters.size === 0 && this.byTicket.get(ticket) === waiters) this.byTicket.delete(ticket);
        resolve();
      };
      const timer = setTimeout(done, waitMs);
      waiters.add(done);
    });
  }

  /** Wakes every waiter of `ticket`. */
  notify(ticket: string): void {
    const set = this.byTicket.get(ticket);
    if (!set) return;
    for (const wake of [...set]) wake();
  }
}
