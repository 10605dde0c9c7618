import type { Command } from 'commander';
import type { CliDeps } from './deps.js';

/**
 * Commands of the other areas (sandbox, repositories, node agent, module agent, controller),
 * wired into the one command tree. Each area exports a `register...` function.
 */
export function registerExtensions(_program: Command, _deps: () => CliDeps, _setExit: (code: number) => void, _get: Command): void {
  // Filled in as each area lands.
}
