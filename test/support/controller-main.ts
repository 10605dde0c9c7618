/**
 * Runs the controller area's commands in-process for tests: `ns8ctl` itself (src/cli/main.ts)
 * with controller extras (node agent factory, abort signal) injected.
 */
import { main, processIO, type MainIO } from '../../src/cli/main.js';
import type { ControllerExtras } from '../../src/cli/commands/controller.js';

/** Runs one `ns8ctl` command with controller extras and returns its exit code (0 ok, 1 error, 2 usage). */
export async function controllerMain(argv: string[], io: MainIO = processIO(), extras: ControllerExtras = {}): Promise<number> {
  return main(argv, io, { controller: extras });
}
