/**
 * `sandbox exec`'s own door to `podman exec`: unlike the CommandRunner (which buffers output and
 * ignores stdin), it streams. Either the command shares this process's stdin, stdout and stderr
 * (`inherit`: the CLI; binary-safe, `journalctl -f` and `apply -f -` work), or its output is
 * handed to callbacks chunk by chunk as it arrives, with optional input (`pipe`: embedders, tests).
 */
import { constants } from 'node:os';
import { StringDecoder } from 'node:string_decoder';
import type { Readable } from 'node:stream';
import { execa } from 'execa';
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

/** The production {@link StreamExec}, on execa (no timeout: `journalctl -f` runs until stopped). */
export const execaStreamExec: StreamExec = async (argv, opts) => {
  const [file, ...args] = argv;
  if (!file) throw new Ns8ctlError('sandbox_exec_failed', 'sandbox exec: empty command line', { user: false });
  let res: { exitCode?: number | undefined; signal?: string | undefined; message?: string | undefined };
  if (opts.stdio.mode === 'inherit') {
    res = await execa(file, args, { stdio: 'inherit', reject: false });
  } else {
    const input = opts.stdio.stdin;
    const child = execa(file, args, { stdin: input === undefined ? 'ignore' : 'pipe', stdout: 'pipe', stderr: 'pipe', buffer: false, reject: false });
    const out = new StringDecoder('utf8');
    const err = new StringDecoder('utf8');
    child.stdout.on('data', (b: Buffer) => opts.onStdout(out.write(b)));
    child.stderr.on('data', (b: Buffer) => opts.onStderr(err.write(b)));
    if (input !== undefined && child.stdin) {
      // The command may exit without reading all of it (EPIPE): its exit code says what happened.
      child.stdin.on('error', () => undefined);
      if (typeof input === 'string' || Buffer.isBuffer(input)) child.stdin.end(input);
      else input.pipe(child.stdin);
    }
    res = await child;
    const restOut = out.end();
    const restErr = err.end();
    if (restOut) opts.onStdout(restOut);
    if (restErr) opts.onStderr(restErr);
  }
  const code = exitCodeOf(res);
  if (code === undefined) throw new Ns8ctlError('sandbox_exec_failed', `sandbox exec: could not run \`${argv.join(' ')}\`: ${res.message ?? 'no exit code'}`);
  return code;
};
