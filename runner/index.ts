/** The runner's public surface: start one, and the options it takes. */
export { startRunner } from "./runner.js";
export type { RunnerHandle, RunnerStop, RunnerDependencies, RunnerStats, ScriptStats } from "./api.js";
export { RUNNER_DEFAULTS, type RunnerOptions, type RunnerInput, type Logger } from "./options.js";
