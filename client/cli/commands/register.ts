/** `tendril register M`: issue a runner token for a machine. */
import { CLI_EXIT } from "../exit-codes.js";
import { clientFor, type ServerFlags } from "../server-client.js";

/** `tendril register M`: only the token on stdout, so `$(tendril register M)` captures it. */
export async function register(machineId: string, flags: ServerFlags): Promise<number> {
  const client = await clientFor(flags);
  const { runnerToken } = await client.registerMachine(machineId);
  process.stdout.write(`${runnerToken}\n`);
  process.stderr.write(
    `Runner token for machine ${machineId} (any earlier token of this machine no longer works). Put it in a file only the\n` +
      "runner's user can read (chmod 600), and start the runner with:\n" +
      `  tendril runner --url ${client.url} --machine ${machineId} --token-file <that file>\n` +
      "(or with the token in the TENDRIL_RUNNER_TOKEN environment variable)\n",
  );
  return CLI_EXIT.ok;
}
