/** The runner's public surface: start one, and the options it takes. */
export { startRunner, type RunnerHandle, type RunnerStop, type RunnerDependencies, type RunnerStats, type ScriptStats } from "./runner.js";
export { RUNNER_DEFAULTS, type RunnerOptions, type RunnerInput, type Logger } from "./options.js";
