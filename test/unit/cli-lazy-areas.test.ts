/**
 * The CLI loads only the area a command line names (startup time); the table it decides with must
 * match what each area really registers, or a command would vanish from its own command line.
 */
import { Command, Help } from 'commander';
import { AREA_COMMAND_SUMMARIES, AREA_COMMANDS, areasFor, loadExtensions, placeholderTerm, registerExtensions, type Area } from '../../src/cli/extensions.js';
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
      const real = program.commands.filter((c) => c.name() !== 'get' && placeholderTerm(c) === undefined);
      expect(real.map((c) => c.name()).sort()).toEqual([...AREA_COMMANDS[area]].sort());
      // The root help lists unloaded areas from the summary table: it must say what the area says.
      for (const c of real) expect(AREA_COMMAND_SUMMARIES[c.name()]).toEqual({ term: new Help().subcommandTerm(c), description: c.description() });
    }
    expect(Object.keys(AREA_COMMAND_SUMMARIES).sort()).toEqual(Object.values(AREA_COMMANDS).flat().sort());
  });

  test('area commands not loaded are listed by placeholders with the real help term', () => {
    const program = new Command('ns8ctl');
    registerExtensions(program, noDeps, () => undefined, program.command('get'), {}, []);
    const sandbox = program.commands.find((c) => c.name() === 'run-action')!;
    expect(placeholderTerm(sandbox)).toBe('run-action [options] <id> <action>');
  });

  test('a core command loads no area (get loads repositories for `get available`)', () => {
    expect(areasFor(['diff', '-f', 'x'])).toEqual([]);
    expect(areasFor(['--redis', 'redis://h:1', 'apply', '-f', 'run'])).toEqual([]);
    expect(areasFor(['--redis=redis://h:1', 'validate'])).toEqual([]);
    expect(areasFor(['get', 'available'])).toEqual(['repository']);
  });

  test('an area command loads its area (help X: X\'s); the root help, no command or an unknown one loads none', () => {
    expect(areasFor(['sandbox', 'create'])).toEqual(['sandbox']);
    expect(areasFor(['--state-dir', '/x', 'run', '-f', 'm/'])).toEqual(['controller']);
    expect(areasFor(['run-action', 'webapp1', 'get-status'])).toEqual(['agent']);
    expect(areasFor([])).toEqual([]);
    expect(areasFor(['--help'])).toEqual([]);
    expect(areasFor(['help'])).toEqual([]);
    expect(areasFor(['help', 'sandbox'])).toEqual(['sandbox']);
    expect(areasFor(['sandbx'])).toEqual([]);
    expect(areasFor(['completion', 'bash'])).toEqual(Object.keys(AREA_COMMANDS));
  });
});
