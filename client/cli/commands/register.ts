/** `tendril register M`: issue a runner token for a machine. */
import { CLI_EXIT } from "../exit-codes.js";
import { clientFor, type ServerFlags } from "../server-client.js";

/** `tendril register M`: only the token on stdout, so `$(tendril register M)` captures it. */
export async function register(machineId: string, flags: ServerFlags): Promise<number> {
  const client = await clientFor(flags);
  const { runnerToken } = await client.registerMachine(machineId);
  process.stdout.write(`${runnerToken}\n`);
  process.stderr.write(
    `Runner token for machine ${machineId} (any earlier token of this machine no longer works). Start its runner with:\n` +
      `  TENDRIL_RUNNER_TOKEN=<the token> tendril runner --url ${client.url} --machine ${machineId}\n`,
  );
  return CLI_EXIT.ok;
}
