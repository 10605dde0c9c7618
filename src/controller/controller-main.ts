/**
 * In-process entry for the controller area's commands, kept for tests: it is `ns8ctl` itself
 * (src/cli/main.ts) with controller extras (node agent factory, abort signal) injected.
 */
import { main, processIO, type MainIO } from '../cli/main.js';
import type { ControllerExtras } from './cli.js';

/** Runs one `ns8ctl` command with controller extras and returns its exit code (0 ok, 1 error, 2 usage). */
export async function controllerMain(argv: string[], io: MainIO = processIO(), extras: ControllerExtras = {}): Promise<number> {
  return main(argv, io, { controller: extras });
}
