/**
 * The audit log: the controller leader appends every event of the real stream (real Redis) to a
 * file, resumes after a restart without gaps or repeats, rotates, and writes nothing secret.
 */
import { mkdtempSync, readFileSync, rmSync, statSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startAuditLog } from '../../src/controller/audit-log.js';
import { Controller } from '../../src/controller/controller.js';
import { EventRecorder, type ControllerEvent } from '../../src/state/events.js';
import { createLogger } from '../../src/runtime/log.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait-for.js';

let srv: TestRedis;
let dir: string;
beforeAll(async () => {
  srv = await startRedis();
  dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-audit-'));
});
afterAll(async () => {
  await srv.stop();
  rmSync(dir, { recursive: true, force: true });
});

const lines = (file: string): ControllerEvent[] => (existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as ControllerEvent) : []);

test('every event reaches the file, once, across a restart of the leader; secrets stay masked', async () => {
  const file = path.join(dir, 'audit.jsonl');
  const events = new EventRecorder(srv.client());
  // Recorded before any controller ran: the first start copies the stream's history.
  await events.record({ name: 'source-applied', type: 'Normal', object: 'source/default', message: 'applied commit abc', data: { revision: 'abc', author: 'Ada', password: 's3cret' } });
  const start = async (): Promise<Controller> => {
    const c = new Controller({ sources: [], resyncMs: 0, leaseMs: 5000, http: { port: 0 }, auditLog: file }, { redis: srv.client(), runner: new ProcessRunner(), logger: createLogger('text', () => undefined) });
    await c.start();
    await waitFor('leadership', () => c.isLeader);
    return c;
  };
  let c = await start();
  await events.record({ name: 'module-stalled', type: 'Warning', object: 'Module/webapp1', message: 'Stalled' });
  await waitFor('two lines', () => lines(file).length === 2);
  expect(statSync(file).mode & 0o777).toBe(0o600);
  await c.stop();
  // While no controller runs.
  await events.record({ name: 'module-suspended', type: 'Normal', object: 'Module/webapp1', message: 'suspended by ops' });
  c = await start();
  await events.record({ name: 'module-resumed', type: 'Normal', object: 'Module/webapp1', message: 'resumed' });
  await waitFor('four lines', () => lines(file).length === 4);
  await new Promise((r) => setTimeout(r, 200));
  await c.stop();
  const all = lines(file);
  expect(all.map((e) => e.name)).toEqual(['source-applied', 'module-stalled', 'module-suspended', 'module-resumed']);
  expect(new Set(all.map((e) => e.id)).size).toBe(4);
  expect(all[0]!.data).toEqual({ revision: 'abc', author: 'Ada', password: '(sensitive value)' });
  expect(readFileSync(file, 'utf8')).not.toContain('s3cret');
}, 30_000);

test('the file rotates past its size, keeping the given number of old files', async () => {
  const file = path.join(dir, 'rotating.jsonl');
  const redis = srv.client();
  await redis.del('ns8ctl/events');
  const log = await startAuditLog(redis, { file, maxBytes: 300, keep: 2, log: () => undefined });
  try {
    const events = new EventRecorder(srv.client());
    for (let i = 0; i < 12; i++) {
      await events.record({ name: 'source-applied', type: 'Normal', object: 'source/default', message: `applied commit ${i}`.padEnd(120, '.') });
      await waitFor(`event ${i} written`, () => [file, `${file}.1`, `${file}.2`].flatMap(lines).some((e) => e.message.startsWith(`applied commit ${i}.`)));
      await log.whenIdle();
    }
  } finally {
    await log.stop();
    redis.disconnect();
  }
  expect(existsSync(`${file}.1`) && existsSync(`${file}.2`)).toBe(true);
  expect(existsSync(`${file}.3`)).toBe(false);
  // The newest events are in the current file, in order; the oldest rotated away.
  const current = lines(file).map((e) => Number(/commit (\d+)/.exec(e.message)![1]));
  expect(current.at(-1)).toBe(11);
  expect([...current].sort((a, b) => a - b)).toEqual(current);
  expect([`${file}.2`, `${file}.1`, file].flatMap(lines).length).toBeLessThan(12);
});
