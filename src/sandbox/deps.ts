/**
 * What sandbox commands need from the outside world, injected so tests can drive them in-process
 * and every external command goes through one CommandRunner.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { ProcessRunner, type CommandRunner } from '../host/runner.js';
import { Ns8ctlError } from '../errors.js';
import type { HostPaths } from './host-check.js';
import { processStreamExec, processExecStdio, type ExecStdio, type StreamExec } from '../host/stream-exec.js';

/** The subset of a Redis client the sandbox uses (ioredis fits). */
export type SandboxRedis = Pick<Redis, 'set' | 'get' | 'hset' | 'sadd' | 'info' | 'quit' | 'disconnect' | 'ping'>;

export interface SandboxDeps {
  runner: CommandRunner;
  /** Results (tables, JSON, URLs). */
  stdout: (text: string) => void;
  /** Progress lines and host adjustment explanations. */
  stderr: (text: string) => void;
  env: NodeJS.ProcessEnv;
  /** Effective uid (undefined on platforms without one). */
  uid: number | undefined;
  /** Opens a connected Redis client (admin URL); the caller closes it. */
  openRedis: (url: string) => Promise<SandboxRedis>;
  /** Project root mounted read-only into nodes (holds package.json, dist/, node_modules/, schemas/). */
  projectRoot: string;
  /** Node binary mounted into nodes (the one running ns8ctl). */
  nodeBinary: string;
  now: () => number;
  sleep: (ms: number) => Promise<void>;
  /** Runs `podman exec` for `sandbox exec` with streamed stdio (not through the runner, which buffers). */
  streamExec: StreamExec;
  /** How `sandbox exec` connects the command: this process's stdio, or `stdout`/`stderr` above. */
  execStdio: ExecStdio;
  /** Host files the host adjustments read and change (default: the real ones; tests use a temp tree). */
  hostPaths?: Partial<HostPaths>;
}

/** Walks up from `start` to the directory whose package.json is named `ns8ctl`. */
export function findProjectRoot(start: string): string {
  let dir = start;
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'ns8ctl') return dir;
      } catch {
        // not ours: keep walking
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Ns8ctlError('project_root_not_found', `cannot find the ns8ctl project (a package.json named ns8ctl) above ${start}`, { user: false });
    dir = up;
  }
}

/**
 * Opens an ioredis client and waits until it answers PING (at most ~5 s of retries); every
 * command is bounded (5 s), so a stopped or paused node's Redis fails instead of hanging.
 */
export async function openRedisClient(url: string): Promise<SandboxRedis> {
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: (t) => (t > 20 ? null : 250), connectTimeout: 3000, commandTimeout: 5000 });
  r.on('error', () => undefined);
  try {
    await r.connect();
    await r.ping();
  } catch (err) {
    r.disconnect();
    throw err;
  }
  return r;
}

/**
 * Production dependencies (process IO, ProcessRunner, real clock). `sandbox exec` shares this
 * process's stdio, unless `stdout` or `stderr` is overridden (and `execStdio` is not): then the
 * command's output goes to those callbacks as it arrives, with no stdin.
 */
export function defaultSandboxDeps(overrides: Partial<SandboxDeps> = {}): SandboxDeps {
  const redirected = overrides.stdout !== undefined || overrides.stderr !== undefined;
  return {
    runner: new ProcessRunner(),
    stdout: (t) => void process.stdout.write(t),
    stderr: (t) => void process.stderr.write(t),
    env: process.env,
    uid: process.getuid?.(),
    openRedis: openRedisClient,
    projectRoot: findProjectRoot(path.dirname(fileURLToPath(import.meta.url))),
    nodeBinary: process.execPath,
    now: () => Date.now(),
    sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
    streamExec: processStreamExec,
    execStdio: redirected ? { mode: 'pipe' } : processExecStdio(),
    ...overrides,
  };
}
