/**
 * The CLI loads only the area a command line names (startup time); the table it decides with must
 * match what each area really registers, or a command would vanish from its own command line.
 */
import { Command } from 'commander';
import { AREA_COMMANDS, areasFor, loadExtensions, registerExtensions, type Area } from '../../src/cli/extensions.js';
import type { CliDeps } from '../../src/cli/deps.js';

const noDeps = (): CliDeps => {
  throw new Error('not called while registering');
};

describe('lazy command areas', () => {
  test('each area registers exactly the top-level commands the table lists', async () => {
    for (const area of Object.keys(AREA_COMMANDS) as Area[]) {
      const program = new Command('ns8ctl');
      const get = program.command('get');
      const only = AREA_COMMANDS[area][0];
      const loaded = await loadExtensions([only]);
      registerExtensions(program, noDeps, () => undefined, get, {}, loaded);
      const names = program.commands.map((c) => c.name()).filter((n) => n !== 'get');
      expect(names.sort()).toEqual([...AREA_COMMANDS[area]].sort());
    }
  });

  test('a core command loads no area (get loads repositories for `get available`)', () => {
    expect(areasFor(['diff', '-f', 'x'])).toEqual([]);
    expect(areasFor(['--redis', 'redis://h:1', 'apply', '-f', 'run'])).toEqual([]);
    expect(areasFor(['--redis=redis://h:1', 'validate'])).toEqual([]);
    expect(areasFor(['get', 'available'])).toEqual(['repository']);
  });

  test('an area command loads its area; help, no command or an unknown one loads all', () => {
    expect(areasFor(['sandbox', 'create'])).toEqual(['sandbox']);
    expect(areasFor(['--state-dir', '/x', 'run', '-f', 'm/'])).toEqual(['controller']);
    expect(areasFor(['run-action', 'webapp1', 'get-status'])).toEqual(['agent']);
    const all = Object.keys(AREA_COMMANDS);
    expect(areasFor([])).toEqual(all);
    expect(areasFor(['--help'])).toEqual(all);
    expect(areasFor(['help', 'sandbox'])).toEqual(all);
    expect(areasFor(['sandbx'])).toEqual(all);
  });
});
