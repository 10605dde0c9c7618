/**
 * One process, run to its end with its output collected: what the CommandRunner (runner.ts) needs
 * from `node:child_process`, and nothing more. It replaced execa there, which cost about 8 ms of
 * CPU per command on top of the spawn itself (about 5 ms) and about 200 ms to load.
 *
 * - Output is collected as Buffers, up to `maxOutputBytes` per stream (100 MiB): past it the
 *   process is killed and the result says `outputTooLarge`.
 * - `timeoutMs` and an aborted `signal` send SIGTERM, then SIGKILL 5 s later if it still runs;
 *   once it ended, what it left running is not waited for (2 s for its output to drain). A
 *   command that exits by itself is waited for until its output closes, as before.
 * - A process that cannot start (`ENOENT`, `EACCES`) resolves with `error` and no exit code.
 * - Processes still running when this process exits are sent SIGTERM (they were being waited for).
 */
import { spawn, type ChildProcess } from 'node:child_process';

export interface SpawnCollectOptions {
  /** Fed on stdin, which is closed after it; without it stdin is /dev/null. */
  input?: string | Buffer;
  cwd?: string;
  /** The whole environment of the command. */
  env: NodeJS.ProcessEnv;
  timeoutMs: number;
  signal?: AbortSignal;
  /** Per stream (default 100 MiB). */
  maxOutputBytes?: number;
}

export interface SpawnCollectResult {
  /** null when it was killed by a signal or never started. */
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: Buffer;
  /** Why it could not start (`spawn foo ENOENT`), or a stream error. */
  error?: Error;
  timedOut: boolean;
  cancelled: boolean;
  outputTooLarge: boolean;
}

const FORCE_KILL_MS = 5_000;
const DRAIN_AFTER_KILL_MS = 2_000;
const DEFAULT_MAX_OUTPUT = 100 * 1024 * 1024;

const live = new Set<ChildProcess>();
let exitHook = false;

/** Installs (once) the exit hook that sends SIGTERM to the commands still being waited for. */
function installExitHook(): void {
  if (exitHook) return;
  exitHook = true;
  process.once('exit', () => {
    for (const child of live) child.kill('SIGTERM');
  });
}

/** Output of one stream, kept up to a limit. */
class Sink {
  readonly chunks: Buffer[] = [];
  size = 0;
  constructor(private readonly limit: number) {}
  /** False when the chunk would pass the limit (it is not kept). */
  push(b: Buffer): boolean {
    if (this.size + b.length > this.limit) return false;
    this.size += b.length;
    this.chunks.push(b);
    return true;
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks, this.size);
  }
}

/** SIGTERM now, SIGKILL FORCE_KILL_MS later if it still runs; `cancel` drops the second. */
function stopper(child: ChildProcess): { stop: () => void; cancel: () => void } {
  let forceKill: NodeJS.Timeout | undefined;
  return {
    stop: () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      forceKill ??= setTimeout(() => child.kill('SIGKILL'), FORCE_KILL_MS);
    },
    cancel: () => clearTimeout(forceKill),
  };
}

export function spawnCollect(file: string, args: readonly string[], opts: SpawnCollectOptions): Promise<SpawnCollectResult> {
  const result: SpawnCollectResult = { exitCode: null, signal: null, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), timedOut: false, cancelled: false, outputTooLarge: false };
  if (opts.signal?.aborted) return Promise.resolve({ ...result, cancelled: true });
  installExitHook();
  return new Promise((resolve) => {
    const child = spawn(file, args, { stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'], env: opts.env, ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}) });
    live.add(child);
    const out = new Sink(opts.maxOutputBytes ?? DEFAULT_MAX_OUTPUT);
    const err = new Sink(opts.maxOutputBytes ?? DEFAULT_MAX_OUTPUT);
    const { stop, cancel } = stopper(child);
    const timer = setTimeout(() => void ((result.timedOut = true), stop()), opts.timeoutMs);
    const onAbort = (): void => void ((result.cancelled = true), stop());
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const dropOutput = (): void => {
      child.stdout?.destroy();
      child.stderr?.destroy();
    };
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      live.delete(child);
      clearTimeout(timer);
      cancel();
      opts.signal?.removeEventListener('abort', onAbort);
      result.stdout = out.bytes();
      result.stderr = err.bytes();
      resolve(result);
    };
    const collect = (sink: Sink) => (b: Buffer) => {
      if (sink.push(b) || result.outputTooLarge) return;
      result.outputTooLarge = true;
      dropOutput(); // its writers get EPIPE instead of writing on
      stop();
    };
    child.stdout?.on('data', collect(out));
    child.stderr?.on('data', collect(err));
    child.on('error', (e) => {
      result.error ??= e;
      if (child.pid === undefined) finish(); // never started: no 'close' is owed
    });
    child.on('exit', (code, sig) => {
      result.exitCode = code;
      result.signal = sig;
      // Killed here: a process it left behind may still hold its output open. What it wrote is
      // read by now; the rest is not waited for.
      if (result.timedOut || result.cancelled || result.outputTooLarge) setTimeout(() => void (dropOutput(), finish()), DRAIN_AFTER_KILL_MS).unref();
    });
    child.on('close', (code, sig) => {
      if (result.exitCode === null && result.signal === null) [result.exitCode, result.signal] = [code, sig];
      finish();
    });
    if (opts.input !== undefined && child.stdin) {
      // The command may exit without reading all of it (EPIPE): its exit code says what happened.
      child.stdin.on('error', () => undefined);
      child.stdin.end(opts.input);
    }
  });
}
