/** A runner connection driven by hand (no runner process): it says hello and the test decides everything else. */
import { PROTOCOL_VERSION } from "../../shared/protocol.js";
import { openRunnerSocket, type TestRunnerSocket } from "./api.js";
import { waitFor } from "./wait.js";

/** A hand-driven runner connection that got its welcome. */
export interface HandRunner extends TestRunnerSocket {
  welcome: any;
  /** The dispatch of `ticket`, once it arrived. */
  dispatchOf(ticket: string): Promise<any>;
  /** Closes the connection and waits for the close. */
  close(): Promise<void>;
}

/** Opens a runner socket for `machineId`, says hello as `runnerId` (listing `inventory`), and waits for the welcome. */
export async function handRunner(
  base: { url: string },
  machineId: string,
  token: string,
  runnerId: string,
  { inventory = [], killGraceMs }: { inventory?: Array<{ ticket: string; fence: number; nextSequence: number; exited: boolean }>; killGraceMs?: number } = {},
): Promise<HandRunner> {
  const socket = await openRunnerSocket(base, machineId, token);
  socket.send({
    type: "hello",
    protocol: PROTOCOL_VERSION,
    runnerId,
    version: "0.1.0",
    capabilities: ["script.v1", "script.abandon"],
    ...(killGraceMs === undefined ? {} : { killGraceMs }),
    inventory,
  });
  const welcome = await waitFor(() => socket.messages.find((m) => m.type === "welcome"), { what: "the welcome" });
  return {
    ...socket,
    welcome,
    dispatchOf: (ticket) => waitFor(() => socket.messages.find((m) => m.type === "dispatch" && m.ticket === ticket), { what: `the dispatch of ${ticket}` }),
    async close() {
      socket.ws.close(1000);
      await socket.closed;
    },
  };
}
