import { CommandFailedError } from '../errors.js';
import { spawnCollect } from './spawn-collect.js';

/** One finished external command, as every caller and test sees it. */
export interface CommandRecord {
  argv: string[];
  exitCode: number | null;
  stdout: string;
  stderr: string;
  durationMs: number;
  /** Free text naming what the command was for: `dokuwiki1: pull image`. */
  purpose?: string;
}

export interface RunOptions {
  /** Text fed on stdin. */
  input?: string | Buffer;
  cwd?: string;
  env?: Record<string, string | undefined>;
  /** Kill after this many ms (default 10 minutes). */
  timeoutMs?: number;
  /** Resolve with the record instead of throwing on a non-zero exit. */
  allowFailure?: boolean;
  /** Says what the command is for, in errors and logs (`dokuwiki1: pull image`). */
  purpose?: string;
  /** True for commands that change the host; kept in the record for idempotency checks. */
  mutating?: boolean;
  /** Return stdout as a Buffer in `stdoutBuffer` (binary output such as tar streams). */
  binary?: boolean;
  /** Kills the command (SIGTERM) when aborted: a shutting-down caller does not wait for it. */
  signal?: AbortSignal;
}

/** Maps a failed command's stderr to a specific error code (`podman_no_such_image`, ...). */
export interface StderrPattern {
  pattern: RegExp;
  code: string;
  hint?: string;
}

/**
 * The one door to external commands: keeps argv, exit code, stderr and duration of every run,
 * maps known stderr patterns to specific errors, and lets tests swap in a fake.
 */
export interface CommandRunner {
  run(argv: string[], opts?: RunOptions): Promise<CommandRecord & { stdoutBuffer?: Buffer }>;
  /** Every command run so far, in order (bounded: the last `historyLimit`). */
  readonly history: readonly (CommandRecord & { mutating: boolean })[];
}

const KNOWN_ERRORS: StderrPattern[] = [
  { pattern: /no such image|image not known|manifest unknown|not found: manifest unknown/i, code: 'image_not_found' },
  { pattern: /connection refused|no such host|i\/o timeout|dial tcp/i, code: 'registry_unreachable' },
  { pattern: /user .* already exists/i, code: 'user_exists' },
  { pattern: /ENOENT|command not found|executable file not found/i, code: 'command_missing' },
];

/** Production runner on `node:child_process` (see spawn-collect.ts). */
export class ProcessRunner implements CommandRunner {
  private readonly records: (CommandRecord & { mutating: boolean })[] = [];

  /**
   * @param historyLimit how many records `history` keeps.
   * @param patterns stderr patterns mapped to specific error codes.
   * @param baseEnv environment of every command (default: this process's); `opts.env` adds to it.
   */
  constructor(
    private readonly historyLimit = 1000,
    private readonly patterns: StderrPattern[] = KNOWN_ERRORS,
    private readonly baseEnv?: NodeJS.ProcessEnv,
  ) {}

  get history(): readonly (CommandRecord & { mutating: boolean })[] {
    return this.records;
  }

  async run(argv: string[], opts: RunOptions = {}): Promise<CommandRecord & { stdoutBuffer?: Buffer }> {
    const [file, ...args] = argv;
    if (!file) throw new CommandFailedError('command_empty', 'empty command line', { argv, exitCode: null, stderr: '' });
    const started = performance.now();
    const res = await spawnCollect(file, args, {
      ...(opts.input !== undefined ? { input: opts.input } : {}),
      ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
      env: this.baseEnv !== undefined ? { ...this.baseEnv, ...(opts.env ?? {}) } : opts.env !== undefined ? { ...process.env, ...opts.env } : process.env,
      timeoutMs: opts.timeoutMs ?? 600_000,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    const durationMs = performance.now() - started;
    const stdoutBuffer = opts.binary ? res.stdout : undefined;
    const stdout = opts.binary ? '' : res.stdout.toString('utf8');
    const stderr = res.stderr.toString('utf8');
    const exitCode = res.exitCode;
    const record = { argv, exitCode, stdout, stderr, durationMs, mutating: opts.mutating ?? false, ...(opts.purpose ? { purpose: opts.purpose } : {}) };
    this.records.push(record);
    if (this.records.length > this.historyLimit) this.records.shift();
    const failed = exitCode !== 0;
    if (failed && !opts.allowFailure) {
      const text: string = stderr || (res.error?.message ?? '');
      const known = this.patterns.find((p) => p.pattern.test(text));
      const what = opts.purpose ? `${opts.purpose}: ` : '';
      const tail = text.trim().split('\n').slice(-5).join('\n');
      const how = res.timedOut ? 'timed out' : res.cancelled ? 'was cancelled' : res.outputTooLarge ? 'printed more than the output limit' : `exited ${exitCode ?? (res.signal ? `by signal ${res.signal}` : 'by signal')}`;
      throw new CommandFailedError(known?.code ?? 'command_failed', `${what}\`${argv.join(' ')}\` ${how}${tail ? `: ${tail}` : ''}${known?.hint ? ` (${known.hint})` : ''}`, { argv, exitCode, stderr: text });
    }
    return stdoutBuffer ? { ...record, stdoutBuffer } : record;
  }
}
