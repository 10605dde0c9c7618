/**
 * A stand-alone entry point with only the controller area's commands (`controller`, `run`,
 * `suspend`, `resume`, `events`) and the global `--redis` / `--state-dir` options. Tests spawn it
 * as a real process (dist/src/controller/bin.js) before the commands are wired into `ns8ctl`;
 * it behaves like `ns8ctl <command>`: same exit codes, errors on stderr.
 */
import { Command, CommanderError } from 'commander';
import type { CliDeps } from '../cli/deps.js';
import { processIO, type MainIO } from '../cli/main.js';
import { renderJson } from '../cli/output.js';
import { toNs8ctlError } from '../errors.js';
import { ExecaRunner } from '../host/runner.js';
import { connectRedis, type Connection } from '../state/connect.js';
import { resolveStateDir } from '../state/state-dir.js';
import { registerControllerCommands, type ControllerExtras } from './cli.js';

/** Runs one command and returns its exit code (0 ok, 1 error, 2 usage). */
export async function controllerMain(argv: string[], io: MainIO = processIO(), extras: ControllerExtras = {}): Promise<number> {
  let code = 0;
  const connections: Connection[] = [];
  const program = new Command('ns8ctl');
  const runner = new ExecaRunner(1000, undefined, io.env);
  let connection: Promise<Connection> | undefined;
  const deps = (): CliDeps => {
    const g = program.opts<{ redis?: string; stateDir?: string }>();
    return {
      stdout: io.stdout,
      stderr: io.stderr,
      env: io.env,
      isTTY: io.isTTY,
      runner,
      stdin: io.stdin,
      cwd: io.cwd,
      connect: (o = {}) => {
        connection ??= connectRedis({ url: g.redis, stateDir: resolveStateDir(g.stateDir, io.env), env: io.env, runner, name: 'ns8ctl', ...o }).then((c) => {
          connections.push(c);
          return c;
        });
        return connection;
      },
    };
  };
  program
    .option('--redis <url>', 'Redis URL (default: $NS8CTL_REDIS_URL, else 127.0.0.1:6379)')
    .option('--state-dir <dir>', 'local state directory')
    .configureOutput({ writeOut: io.stdout, writeErr: io.stderr })
    .exitOverride();
  registerControllerCommands(program, deps, (c) => (code = c), extras);
  const wantsJson = argv.some((a, i) => (a === '-o' || a === '--output') && argv[i + 1] === 'json');
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) code = err.exitCode === 0 ? 0 : 2;
    else {
      const e = toNs8ctlError(err);
      if (wantsJson) io.stdout(renderJson(e.toJSON()));
      io.stderr(`error: ${e.message}\n`);
      code = Math.max(e.exitCode, 1);
    }
  } finally {
    for (const c of connections) c.redis.disconnect();
  }
  return code;
}
