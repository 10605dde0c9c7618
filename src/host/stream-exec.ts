/**
 * `sandbox exec`'s own door to `podman exec`: unlike the CommandRunner (which buffers output and
 * ignores stdin), it streams. Either the command shares this process's stdin, stdout and stderr
 * (`inherit`: the CLI; binary-safe, `journalctl -f` and `apply -f -` work), or its output is
 * handed to callbacks chunk by chunk as it arrives, with optional input (`pipe`: embedders, tests).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants } from 'node:os';
import { StringDecoder } from 'node:string_decoder';
import type { Readable } from 'node:stream';
import { Ns8ctlError } from '../errors.js';

/** How a command run by `sandbox exec` is connected to this process. */
export type ExecStdio =
  /** This process's own file descriptors (what the CLI uses); `-t` is added when both are terminals. */
  | { mode: 'inherit'; stdinIsTTY: boolean; stdoutIsTTY: boolean }
  /** Output to the callbacks as it arrives (UTF-8 text); `stdin`, when given, is fed to the command. */
  | { mode: 'pipe'; stdin?: string | Buffer | Readable };

/** What {@link StreamExec} needs besides argv. */
export interface StreamExecOptions {
  stdio: ExecStdio;
  /** Receives stdout chunks in `pipe` mode (unused with `inherit`). */
  onStdout: (text: string) => void;
  /** Receives stderr chunks in `pipe` mode (unused with `inherit`). */
  onStderr: (text: string) => void;
}

/**
 * Runs argv with streamed stdio and resolves with its exit code (128 + signal number when it was
 * killed by a signal, as shells report it). Never rejects on a non-zero exit; rejects with
 * `sandbox_exec_failed` only when the command cannot be started at all.
 */
export type StreamExec = (argv: string[], opts: StreamExecOptions) => Promise<number>;

/** The stdio of this process, as `sandbox exec` connects it by default. */
export function processExecStdio(): ExecStdio {
  return { mode: 'inherit', stdinIsTTY: Boolean(process.stdin.isTTY), stdoutIsTTY: Boolean(process.stdout.isTTY) };
}

/**
 * Pure: the `podman exec` flags for a stdio: `-i` whenever the command gets a stdin (always with
 * `inherit`, so `exec 1 -- ns8ctl apply -f - < x.yaml` works), `-t` only when both stdin and
 * stdout are terminals (so `exec 1 -- cat f > copy` stays byte-exact, without a terminal's CRLF).
 */
export function podmanExecFlags(stdio: ExecStdio): string[] {
  if (stdio.mode === 'pipe') return stdio.stdin === undefined ? [] : ['-i'];
  return stdio.stdinIsTTY && stdio.stdoutIsTTY ? ['-i', '-t'] : ['-i'];
}

function exitCodeOf(res: { exitCode?: number | undefined; signal?: string | undefined }): number | undefined {
  if (res.exitCode !== undefined) return res.exitCode;
  if (res.signal) return 128 + (constants.signals[res.signal as keyof typeof constants.signals] ?? 0);
  return undefined;
}

/** Runs to the end: the exit code and signal, or why it could not start. */
function waitFor(child: ChildProcess): Promise<{ exitCode?: number | undefined; signal?: string | undefined; message?: string | undefined }> {
  return new Promise((resolve) => {
    child.once('error', (e) => {
      if (child.pid === undefined) resolve({ message: e.message });
    });
    child.once('close', (code, sig) => resolve({ ...(code !== null ? { exitCode: code } : {}), ...(sig ? { signal: sig } : {}) }));
  });
}

/** The production {@link StreamExec}, on `node:child_process` (no timeout: `journalctl -f` runs until stopped). */
export const processStreamExec: StreamExec = async (argv, opts) => {
  const [file, ...args] = argv;
  if (!file) throw new Ns8ctlError('sandbox_exec_failed', 'sandbox exec: empty command line', { user: false });
  let res: { exitCode?: number | undefined; signal?: string | undefined; message?: string | undefined };
  if (opts.stdio.mode === 'inherit') {
    res = await waitFor(spawn(file, args, { stdio: 'inherit' }));
  } else {
    const input = opts.stdio.stdin;
    const child = spawn(file, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    const ended = waitFor(child);
    const out = new StringDecoder('utf8');
    const err = new StringDecoder('utf8');
    child.stdout?.on('data', (b: Buffer) => opts.onStdout(out.write(b)));
    child.stderr?.on('data', (b: Buffer) => opts.onStderr(err.write(b)));
    if (input !== undefined && child.stdin) {
      // The command may exit without reading all of it (EPIPE): its exit code says what happened.
      child.stdin.on('error', () => undefined);
      if (typeof input === 'string' || Buffer.isBuffer(input)) child.stdin.end(input);
      else input.pipe(child.stdin);
    }
    res = await ended;
    const restOut = out.end();
    const restErr = err.end();
    if (restOut) opts.onStdout(restOut);
    if (restErr) opts.onStderr(restErr);
  }
  const code = exitCodeOf(res);
  if (code === undefined) throw new Ns8ctlError('sandbox_exec_failed', `sandbox exec: could not run \`${argv.join(' ')}\`: ${res.message ?? 'no exit code'}`);
  return code;
};
