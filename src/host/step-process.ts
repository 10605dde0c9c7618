/**
 * Action steps and runagent commands, spawned with node:child_process directly. Why not the command
 * runner (src/host/runner.ts): action steps need (1) an extra pipe on file descriptor 3 for the
 * AGENT_COMFD protocol, read line by line while the step runs, (2) stdout/stderr streamed as they
 * come (stderr is tee'd to the agent log, progress is published meanwhile), (3) their own process
 * group so cancel-task can SIGTERM the step and everything it forked, and (4) for runagent, a
 * terminal handed over to an interactive command. The runner buffers one-shot commands and does
 * none of these; every other external command still goes through it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants as osConstants } from 'node:os';

/** How to run one step. */
export interface StepProcessOptions {
  file: string;
  args?: readonly string[];
  cwd: string;
  env: Readonly<Record<string, string>>;
  /** Text written to stdin (the task data as JSON); stdin is then closed. */
  input: string;
  /** Open a pipe on fd 3 and deliver its lines to onCommandLine (AGENT_COMFD). */
  comfd: boolean;
  onStdout?(text: string): void;
  onStderr?(text: string): void;
  onCommandLine?(line: string): void;
  /** On abort, SIGTERM goes to the step's whole process group (once). */
  signal?: AbortSignal;
  /** Drop privileges to this user/group (only as root). */
  uid?: number;
  gid?: number;
  /**
   * After the step exits, how long to wait for its pipes to close (a background child may keep
   * them open) before closing them ourselves. Default 5000 ms.
   */
  drainMs?: number;
}

/** How a step ended. A step that could not be started has `spawnError` set. */
export interface StepProcessResult {
  /** Exit code; for a signal-killed step 128 + signal number (shell convention). */
  exitCode: number;
  signal: NodeJS.Signals | null;
  spawnError?: NodeJS.ErrnoException;
}

/** Runs one step process to completion. Never rejects: failures are in the result. */
export function runStepProcess(opts: StepProcessOptions): Promise<StepProcessResult> {
  return new Promise((resolve) => {
    let settled = false;
    const finish = (r: StepProcessResult): void => {
      if (settled) return;
      settled = true;
      opts.signal?.removeEventListener('abort', onAbort);
      resolve(r);
    };
    let child;
    try {
      child = spawn(opts.file, [...(opts.args ?? [])], {
        cwd: opts.cwd,
        env: { ...opts.env },
        stdio: ['pipe', 'pipe', 'pipe', opts.comfd ? 'pipe' : 'ignore'],
        detached: true, // new session and process group: cancel-task signals the whole group
        ...(opts.uid !== undefined ? { uid: opts.uid } : {}),
        ...(opts.gid !== undefined ? { gid: opts.gid } : {}),
      });
    } catch (err) {
      finish({ exitCode: 127, signal: null, spawnError: err as NodeJS.ErrnoException });
      return;
    }
    const pid = child.pid;
    let killed = false;
    function onAbort(): void {
      if (killed || pid === undefined) return;
      killed = true;
      try {
        process.kill(-pid, 'SIGTERM');
      } catch {
        // already gone
      }
    }
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (pid === undefined) finish({ exitCode: 127, signal: null, spawnError: err });
    });
    if (pid === undefined) return; // 'error' follows
    if (opts.signal?.aborted) onAbort();
    else opts.signal?.addEventListener('abort', onAbort, { once: true });

    pipeStdio(child, opts);
    const com = opts.comfd ? child.stdio[3] : null;
    const commands = readCommandLines(com, opts.onCommandLine);
    let exit: StepProcessResult | undefined;
    let drainTimer: NodeJS.Timeout | undefined;
    child.on('exit', (code, sig) => {
      const signo = sig ? (osConstants.signals as Record<string, number>)[sig] ?? 15 : 0;
      exit = { exitCode: code ?? 128 + signo, signal: sig };
      drainTimer = setTimeout(() => {
        child.stdout?.destroy();
        child.stderr?.destroy();
        (com as { destroy?: () => void } | null)?.destroy?.();
      }, opts.drainMs ?? 5000);
    });
    child.on('close', () => {
      if (drainTimer) clearTimeout(drainTimer);
      commands.flush();
      finish(exit ?? { exitCode: 1, signal: null });
    });
  });
}

/** Feeds the input on stdin (a step that does not read it is fine) and passes stdout and stderr on as text. */
function pipeStdio(child: ChildProcess, opts: StepProcessOptions): void {
  child.stdin?.on('error', () => undefined); // a step that does not read stdin closes it early (EPIPE)
  child.stdin?.end(opts.input);
  child.stdout?.setEncoding('utf8');
  child.stderr?.setEncoding('utf8');
  child.stdout?.on('data', (t: string) => opts.onStdout?.(t));
  child.stderr?.on('data', (t: string) => opts.onStderr?.(t));
}

/** Splits the AGENT_COMFD stream into non-blank lines for `onLine`; flush() passes on an unterminated last line once the stream closed. */
function readCommandLines(com: ChildProcess['stdio'][3] | null, onLine: ((line: string) => void) | undefined): { flush(): void } {
  let pending = '';
  if (com && 'setEncoding' in com) {
    com.setEncoding('utf8');
    com.on('data', (t: string) => {
      pending += t;
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (line.trim() !== '') onLine?.(line);
      }
    });
    com.on('error', () => undefined);
  }
  return {
    flush(): void {
      if (pending.trim() !== '') onLine?.(pending);
      pending = '';
    },
  };
}

/** How to run an interactive command for runagent. */
export interface InteractiveOptions {
  cwd: string;
  env: Readonly<Record<string, string>>;
  uid?: number;
  gid?: number;
}

/**
 * Runs `argv` with our stdin/stdout/stderr (a terminal when we have one) and resolves with its
 * exit code (128 + signal when killed). SIGINT/SIGQUIT are left to the child while it runs.
 */
export function runInteractive(argv: readonly string[], opts: InteractiveOptions): Promise<{ exitCode: number; spawnError?: NodeJS.ErrnoException }> {
  const [file, ...args] = argv;
  return new Promise((resolve) => {
    if (!file) {
      resolve({ exitCode: 2 });
      return;
    }
    const ignore = (): void => undefined;
    process.on('SIGINT', ignore);
    process.on('SIGQUIT', ignore);
    const done = (r: { exitCode: number; spawnError?: NodeJS.ErrnoException }): void => {
      process.off('SIGINT', ignore);
      process.off('SIGQUIT', ignore);
      resolve(r);
    };
    const child = spawn(file, args, {
      cwd: opts.cwd,
      env: { ...opts.env },
      stdio: 'inherit',
      ...(opts.uid !== undefined ? { uid: opts.uid } : {}),
      ...(opts.gid !== undefined ? { gid: opts.gid } : {}),
    });
    child.on('error', (err: NodeJS.ErrnoException) => done({ exitCode: 127, spawnError: err }));
    child.on('exit', (code, sig) => {
      const signo = sig ? (osConstants.signals as Record<string, number>)[sig] ?? 15 : 0;
      done({ exitCode: code ?? 128 + signo });
    });
  });
}
