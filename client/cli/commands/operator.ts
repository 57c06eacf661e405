/** `tendril operator add|list|remove`: the people who watch (viewer) or also cancel and abandon (operator). */
import type { OperatorRole } from "../../../shared/api.js";
import { CLI_EXIT } from "../exit-codes.js";
import { formatTable, formatTime } from "../output.js";
import { clientFor, type ServerFlags } from "../server-client.js";

/** Flags of `tendril operator add`. */
export interface AddOperatorFlags extends ServerFlags {
  role: OperatorRole;
  /** The token's lifetime in days (1–365; the control plane's default is 90). */
  expiresInDays?: number;
  json?: boolean;
}

/** `tendril operator add NAME --role R`: the token alone on stdout (shown this once), what to do with it on stderr. */
export async function addOperator(name: string, flags: AddOperatorFlags): Promise<number> {
  const client = await clientFor(flags);
  const added = await client.addOperator({ name, role: flags.role, ...(flags.expiresInDays !== undefined && { expiresInDays: flags.expiresInDays }) });
  if (flags.json) {
    process.stdout.write(`${JSON.stringify(added, null, 2)}\n`);
    return CLI_EXIT.ok;
  }
  const may = added.role === "operator" ? "read the fleet, scripts and audit feed, and cancel and abandon scripts" : "read the fleet, scripts and audit feed";
  process.stderr.write(
    `Operator ${added.name} (role ${added.role}) may ${may}. Its token, shown only this once (any earlier token of ` +
      `${added.name} no longer works), expires ${formatTime(added.expiresAt)} UTC:\n`,
  );
  process.stdout.write(`${added.token}\n`);
  process.stderr.write(
    `Hand it to ${added.name} privately. They use it where the server token would go, e.g.\n` +
      `  TENDRIL_URL=${client.url} TENDRIL_SERVER_TOKEN=<token> tendril machines\n` +
      `or to sign in to the console at ${client.url}/. Revoke it with: tendril operator remove ${added.name}\n`,
  );
  return CLI_EXIT.ok;
}

/** `tendril operator list`: name, role, created, expires, last used. */
export async function listOperators(flags: ServerFlags & { json?: boolean }): Promise<number> {
  const client = await clientFor(flags);
  const operators = await client.listOperators();
  if (flags.json) {
    process.stdout.write(`${JSON.stringify({ operators }, null, 2)}\n`);
    return CLI_EXIT.ok;
  }
  if (operators.length === 0) {
    process.stdout.write("no operators yet (add one with: tendril operator add <name> --role viewer|operator)\n");
    return CLI_EXIT.ok;
  }
  const rows = operators.map((operator) => [
    operator.name,
    operator.role,
    formatTime(operator.createdAt),
    formatTime(operator.expiresAt),
    operator.lastUsedAt === null ? "never" : formatTime(operator.lastUsedAt),
  ]);
  process.stdout.write(formatTable(["NAME", "ROLE", "CREATED (UTC)", "EXPIRES (UTC)", "LAST USED (UTC)"], rows));
  return CLI_EXIT.ok;
}

/** `tendril operator remove NAME`: its token stops working at once. */
export async function removeOperator(name: string, flags: ServerFlags): Promise<number> {
  const client = await clientFor(flags);
  await client.removeOperator(name);
  process.stdout.write(`operator ${name} removed: its token no longer works and its console sessions have ended\n`);
  return CLI_EXIT.ok;
}
