/**
 * A long-running process keeps its Redis connection across Redis restarts: once a connection is
 * proven, it reconnects with capped backoff for as long as it runs, however long Redis is down,
 * while each command still fails in bounded time while Redis is away.
 */
import { jest } from '@jest/globals';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ProcessRunner } from '../../src/host/runner.js';
import { connectRedis, reconnectDelay } from '../../src/state/connect.js';
import { freePort } from '../support/redis-server.js';

async function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => (s.end(), resolve(true)));
    s.on('error', () => resolve(false));
  });
}

async function startServer(port: number, dir: string): Promise<ChildProcess> {
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir], { stdio: 'ignore' });
  for (let i = 0; i < 200 && !(await answers(port)); i++) await new Promise((r) => setTimeout(r, 50));
  return child;
}

async function stopServer(child: ChildProcess): Promise<void> {
  child.kill('SIGKILL');
  await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
}

describe('a proven Redis connection', () => {
  it('reconnects after Redis was down for longer than the first connection would retry', async () => {
    const port = await freePort();
    const dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-reconnect-'));
    let server = await startServer(port, dir);
    const { redis } = await connectRedis({ url: `redis://127.0.0.1:${port}`, stateDir: dir, runner: new ProcessRunner(), startEmbedded: false, commandTimeoutMs: 5_000 });
    const subscriber = redis.duplicate();
    const printed: string[] = [];
    const spy = jest.spyOn(console, 'error').mockImplementation((...args: unknown[]) => void printed.push(args.map(String).join(' ')));
    try {
      // Its socket errors go to a listener: ioredis prints unhandled ones as stack traces.
      expect(subscriber.listenerCount('error')).toBeGreaterThan(0);
      await subscriber.subscribe('ns8ctl/event/x');
      await redis.set('k', 'before');
      await stopServer(server);
      // While Redis is down a command fails in bounded time (it is not queued forever)...
      await expect(redis.get('k')).rejects.toThrow();
      // ... and the client keeps trying well past the few retries of the first connection.
      await new Promise((r) => setTimeout(r, 3_000));
      server = await startServer(port, dir);
      let value: string | null | undefined;
      for (let i = 0; i < 100 && value === undefined; i++) {
        value = await redis.get('k').catch(() => undefined);
        if (value === undefined) await new Promise((r) => setTimeout(r, 100));
      }
      expect(value).toBe('before');
      // The subscriber's socket errors while Redis was away were not thrown as unhandled events.
      expect(printed.filter((l) => l.includes('Unhandled error event'))).toEqual([]);
    } finally {
      spy.mockRestore();
      subscriber.disconnect();
      redis.disconnect();
      await stopServer(server);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('backs off 100 ms more per attempt, capped at 2 s, and never gives up', () => {
    expect([1, 2, 5, 20, 1000].map(reconnectDelay)).toEqual([100, 200, 500, 2000, 2000]);
  });
});
