import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { startRedis, type TestRedis } from './redis-server.js';

/** A real redis-server for the whole file, and per test an empty Redis, a temp dir and a CLI env pointing at both. */
export interface CliProject {
  srv: TestRedis;
  redis: Redis;
  /** Fresh temp directory of the running test. */
  dir: string;
  /** NS8CTL_REDIS_URL, NS8CTL_STATE_DIR (inside dir) and `extraEnv`. */
  env: NodeJS.ProcessEnv;
  /** Writes `dir/rel` (making its directories) and returns its path. */
  write(rel: string, text: string): string;
}

/**
 * Registers the jest hooks of a CLI integration test file: redis-server started once
 * (beforeAll), flushed and given a new temp dir before each test, everything removed after.
 */
export function useCliProject(prefix: string, extraEnv: NodeJS.ProcessEnv = {}): CliProject {
  const p = {
    write(rel: string, text: string): string {
      const file = path.join(p.dir, rel);
      mkdirSync(path.dirname(file), { recursive: true });
      writeFileSync(file, text);
      return file;
    },
  } as CliProject;
  beforeAll(async () => {
    p.srv = await startRedis();
    p.redis = p.srv.client();
  });
  afterAll(async () => {
    await p.srv.stop();
  });
  beforeEach(async () => {
    await p.redis.flushall();
    p.dir = mkdtempSync(path.join(tmpdir(), prefix));
    p.env = { NS8CTL_REDIS_URL: p.srv.url, NS8CTL_STATE_DIR: path.join(p.dir, '.state'), ...extraEnv };
  });
  afterEach(() => rmSync(p.dir, { recursive: true, force: true }));
  return p;
}
