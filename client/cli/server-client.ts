/** The SDK client of the server-side commands, from `--url`/`--server-token`, the environment or `.tendril/local.json`. */
import { randomBytes } from "node:crypto";
import { resolveServerSettings } from "../local-config.js";
import { TendrilClient } from "../sdk.js";

/** `--url` and `--server-token`, shared by every server-side command. */
export interface ServerFlags {
  url?: string;
  serverToken?: string;
}

/** A client for the control plane the flags, the environment or the local settings file name. */
export async function clientFor(flags: ServerFlags): Promise<TendrilClient> {
  const settings = await resolveServerSettings({
    flagUrl: flags.url,
    flagToken: flags.serverToken,
    env: process.env,
    cwd: process.cwd(),
  });
  return new TendrilClient(settings);
}

/** A fresh server token for a local control plane: 32 random bytes, base64url. */
export function generateServerToken(): string {
  return randomBytes(32).toString("base64url");
}
