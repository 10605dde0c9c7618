/**
 * `ns8ctl delete module ID` / `remove-module ID` of an orphan (an instance a node runs whose
 * desired object is gone): an explicit, recorded removal request for the node agent, never a
 * silent no-op and never a removal by absence.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { runCli } from '../support/cli.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';

let srv: TestRedis;
let redis: Redis;
let stateDir: string;
const env = (): NodeJS.ProcessEnv => ({ NS8CTL_REDIS_URL: srv.url, NS8CTL_STATE_DIR: stateDir, NS8CTL_OFFLINE: '1' });

beforeAll(async () => {
  srv = await startRedis();
  redis = srv.client();
  stateDir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-orphan-'));
});
afterAll(async () => {
  await srv.stop();
  rmSync(stateDir, { recursive: true, force: true });
});
beforeEach(async () => {
  await redis.flushall();
});

describe('delete of an orphan', () => {
  it('writes a removal request with who, when and why when a node still runs the instance', async () => {
    await redis.hset('cluster/module_node', 'webapp7', '1');
    const r = await runCli(['delete', 'module', 'webapp7', '--no-preserve'], env());
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('removal requested (DATA DELETED');
    const request = JSON.parse((await redis.get('ns8ctl/removal/module/webapp7'))!) as Record<string, string>;
    expect(request).toMatchObject({ removalPolicy: 'Delete', why: 'ns8ctl delete (orphan)' });
    expect(request.by).toMatch(/@/);
    expect(Date.parse(request.at!)).not.toBeNaN();
  });

  it('counts an instance an agent reports on as running, and remove-module keeps data by default', async () => {
    await redis.hset('ns8ctl/status/module/webapp8', 'phase', 'Ready');
    const r = await runCli(['remove-module', 'webapp8'], env());
    expect(r.code).toBe(0);
    expect(JSON.parse((await redis.get('ns8ctl/removal/module/webapp8'))!)).toMatchObject({ removalPolicy: 'Preserve', why: 'remove-module (orphan)' });
  });

  it('is still "not found" for an id nothing runs, and writes nothing', async () => {
    const r = await runCli(['delete', 'module', 'nothing1'], env());
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('not found in desired state');
    expect(await redis.keys('*')).toEqual([]);
  });
});
