// `npm run screenshots`: refreshes the console's screenshots that the README shows (docs/screenshots/: the fleet, a
// machine and a script, each at 1200 px and at 400 px wide). It runs the console's browser test, which takes them as
// it goes, with its screenshots written to docs/screenshots/ instead of test-artifacts/screenshots/.
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const result = spawnSync(process.execPath, [join(root, "node_modules", "vitest", "vitest.mjs"), "run", "test/browser/console.test.ts"], {
  cwd: root,
  stdio: "inherit",
  env: { ...process.env, TENDRIL_SCREENSHOTS_DIR: join(root, "docs", "screenshots") },
});
if (result.status === 0) console.log(`\nScreenshots written to ${join("docs", "screenshots")}/`);
process.exit(result.status ?? 1);
