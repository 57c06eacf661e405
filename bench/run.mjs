// `npm run bench`: measures Tendril against its physical limits on this machine and prints one table, then where the
// time of a dispatch and of a handoff goes, stage by stage (also written to bench/results.json). `--quick` runs a
// short version; `--tiny` only checks the plumbing. `--check` exits non-zero when a target is missed.
import { writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import * as figures from "./figures.mjs";
import { ROOT, RUNTIME_ROOT } from "./stack.mjs";

const SIZES = {
  full: { dispatchRuns: 300, handoffScripts: 500, abandonRuns: 25, outputMb: 100, queueShallow: 10, queueDeep: 10_000, queueRuns: 50, fleet: 1000, fleetSmall: 10, fleetDispatchRuns: 50, idleSeconds: 20, concurrentScripts: 100, fleetList: 10_000, fleetListRuns: 200, idleRssSeconds: 20 },
  quick: { dispatchRuns: 100, handoffScripts: 200, abandonRuns: 20, outputMb: 100, queueShallow: 10, queueDeep: 2_000, queueRuns: 30, fleet: 300, fleetSmall: 10, fleetDispatchRuns: 30, idleSeconds: 5, concurrentScripts: 100, fleetList: 2_000, fleetListRuns: 100, idleRssSeconds: 20 },
  tiny: { dispatchRuns: 5, handoffScripts: 10, abandonRuns: 2, outputMb: 1, queueShallow: 2, queueDeep: 20, queueRuns: 3, fleet: 5, fleetSmall: 2, fleetDispatchRuns: 3, idleSeconds: 1, concurrentScripts: 5, fleetList: 20, fleetListRuns: 3, idleRssSeconds: 3 },
};

const args = process.argv.slice(2);
const check = args.includes("--check");
const mode = args.includes("--tiny") ? "tiny" : args.includes("--quick") ? "quick" : "full";
const outIndex = args.indexOf("--out");
const outFile = outIndex >= 0 ? args[outIndex + 1] : join(ROOT, "bench", "results.json");
const only = args.filter((a) => !a.startsWith("--") && a !== outFile);
const sizes = SIZES[mode];

const order = ["dispatch", "handoff", "abandon", "output", "queueDepth", "fleet", "fleetList", "runnerMemory"];
const rows = [];
const startedAt = new Date();
for (const name of order) {
  if (only.length && !only.includes(name)) continue;
  const started = performance.now();
  try {
    rows.push(...(await figures[name](sizes)));
  } catch (error) {
    rows.push({ figure: name, value: null, unit: "", baseline: null, ratio: null, target: "", met: false, note: `failed: ${error.message}` });
  }
  process.stderr.write(`bench: ${name} done in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
}

const fmt = (v) => (typeof v === "number" ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2)) : "—");
/** Prints a Markdown table whose columns are as wide as their widest cell. */
function printTable(lines) {
  const widths = lines[0].map((_, i) => Math.max(...lines.map((line) => String(line[i]).length)));
  const print = (line) => `| ${line.map((cell, i) => String(cell).padEnd(widths[i])).join(" | ")} |`;
  console.log(print(lines[0]));
  console.log(`|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`);
  for (const line of lines.slice(1)) console.log(print(line));
}

console.log(`Tendril benchmark (${mode}) — ${startedAt.toISOString()}, ${cpus().length} cores, Node ${process.version}`);
console.log(`Runners: work dirs in ${process.env.TENDRIL_BENCH_RUNNER_ROOT || tmpdir()}, ${RUNTIME_ROOT === undefined ? "run folders in the work dirs" : `runtime dirs in ${RUNTIME_ROOT}`}`);
printTable([
  ["figure", "value", "baseline (same run)", "ratio", "fixed cost", "target", "met"],
  ...rows.map((r) => [
    r.figure,
    r.value === null ? "—" : `${fmt(r.value)} ${r.unit}`,
    r.baseline == null ? "—" : `${fmt(r.baseline)} ${r.unit}`,
    r.ratio == null ? "—" : `${r.ratio.toFixed(2)}×`,
    r.fixedCost == null ? "—" : `${r.fixedCost.toFixed(2)} ms${r.unit === "ms" ? "" : " per script"}`,
    r.target,
    r.met ? "yes" : `NO${r.note ? ` (${r.note})` : ""}`,
  ]),
]);
for (const r of rows) if (r.note && r.met) console.log(`  ${r.figure}: ${r.note}`);
for (const r of rows.filter((r) => r.breakdown)) {
  console.log(`\nWhere the time of ${r.figure.replace(/ \(.*/, "")} goes (${r.breakdownNote}):`);
  printTable([["stage", "ms"], ...r.breakdown.map(({ stage, ms }) => [stage, ms.toFixed(2)])]);
}
for (const r of rows.filter((r) => r.cpuBreakdown)) {
  console.log(`\nWhere the CPU of ${r.figure.replace(/ \(.*/, "")} goes (${r.cpuNote}):`);
  printTable([["part", "ms"], ...r.cpuBreakdown.map(({ part, ms }) => [part, ms.toFixed(2)])]);
}
writeFileSync(outFile, JSON.stringify({ mode, startedAt: startedAt.toISOString(), cores: cpus().length, node: process.version, runtimeRoot: RUNTIME_ROOT ?? null, rows }, null, 2) + "\n");
const missed = rows.filter((r) => !r.met);
if (check && missed.length > 0) console.error(`bench --check: ${missed.length} target(s) missed: ${missed.map((r) => r.figure).join("; ")}`);
process.exit(rows.every((r) => r.value !== null) && !(check && missed.length > 0) ? 0 : 1);
