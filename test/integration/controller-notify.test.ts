/**
 * Notifications: the controller leader follows the real event stream in a real Redis and POSTs
 * Warning events (deduplicated) and their resolution to a real HTTP server on loopback. A server
 * that fails is retried, then given up with a log line; reconciling is never disturbed.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Controller } from '../../src/controller/controller.js';
import { EventRecorder, type ControllerEvent } from '../../src/state/events.js';
import { createLogger } from '../../src/runtime/log.js';
import { NotificationFilter, startNotifier } from '../../src/controller/notifier.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait-for.js';

let srv: TestRedis;
let server: http.Server;
let url: string;
const received: { text: string; event: ControllerEvent; resolved: boolean }[] = [];
/** Status the server answers with next (then 200 again). */
const failNext: number[] = [];

beforeAll(async () => {
  srv = await startRedis();
  server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      const status = failNext.shift() ?? 200;
      if (status === 200) received.push(JSON.parse(body) as (typeof received)[number]);
      res.statusCode = status;
      res.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/ns8ctl?token=t0k3n`;
});
afterAll(async () => {
  await srv.stop();
  await new Promise((r) => server.close(r));
});

test('the leader posts Warnings once per quiet period, and their resolution', async () => {
  const lines: string[] = [];
  const c = new Controller(
    { sources: [], resyncMs: 0, leaseMs: 5000, http: { port: 0 }, notify: { url, quietMs: 3_600_000 } },
    { redis: srv.client(), runner: new ProcessRunner(), logger: createLogger('text', (l) => lines.push(l)) },
  );
  await c.start();
  try {
    await waitFor('leadership', () => c.isLeader);
    // The notifier runs once its connection exists (it fixed where it follows from before that).
    const admin = srv.client();
    await waitFor('the notifier started', async () => ((await admin.call('CLIENT', 'LIST')) as string).includes('name=ns8ctl-notifier'));
    admin.disconnect();
    const events = new EventRecorder(srv.client());
    const stalled = { name: 'module-stalled', type: 'Warning' as const, object: 'Module/dokuwiki1', message: 'Stalled: UnitFailed: unit dokuwiki.service did not start' };
    await events.record(stalled);
    await events.record(stalled); // the same again: not sent
    await events.record({ name: 'source-applied', type: 'Normal', object: 'source/default', message: 'applied commit abc' }); // nothing open: not sent
    await events.record({ name: 'source-fetch-failed', type: 'Warning', object: 'source/default', message: 'fetching branch main failed', data: { token: 'hidden-value' } });
    await events.record({ name: 'module-became-ready', type: 'Normal', object: 'Module/dokuwiki1', message: 'Ready: Converged' });
    await waitFor('three notifications', () => received.length >= 3);
    await new Promise((r) => setTimeout(r, 200));
    expect(received.map((r) => r.text)).toEqual([
      '[ns8ctl] warning: Module/dokuwiki1: module-stalled: Stalled: UnitFailed: unit dokuwiki.service did not start',
      '[ns8ctl] warning: source/default: source-fetch-failed: fetching branch main failed',
      '[ns8ctl] resolved: Module/dokuwiki1: module-became-ready: Ready: Converged',
    ]);
    expect(received[2]!.resolved).toBe(true);
    expect(received[1]!.event.data).toEqual({ token: '(sensitive value)' });
    // Resolved: the same Warning is news again.
    await events.record(stalled);
    await waitFor('the warning again', () => received.length === 4);
  } finally {
    await c.stop();
  }
}, 30_000);

test('a failing webhook is retried, then given up with a log line naming its host only (the path and query may hold its secret)', async () => {
  const lines: string[] = [];
  const redis = srv.client();
  const n = await startNotifier(redis, { url, retryDelaysMs: [50, 50], log: (l) => lines.push(l) });
  try {
    const before = received.length;
    const events = new EventRecorder(srv.client());
    failNext.push(500, 503); // two failures, then success on the second retry
    await events.record({ name: 'node-down', type: 'Warning', object: 'Node/2', message: 'unreachable' });
    await waitFor('delivered after two retries', () => received.length === before + 1);
    failNext.push(500, 500, 500);
    await events.record({ name: 'node-down', type: 'Warning', object: 'Node/3', message: 'unreachable' });
    await waitFor('given up', () => lines.some((l) => l.includes('node-down for Node/3 not sent')));
    expect(lines.find((l) => l.includes('Node/3'))).toMatch(/not sent to http:\/\/127\.0\.0\.1:\d+\/\.\.\.: HTTP 500$/);
    expect(lines.join('\n')).not.toContain('t0k3n');
    await n.whenIdle();
    expect(received.length).toBe(before + 1);
  } finally {
    await n.stop();
    redis.disconnect();
  }
}, 30_000);

test('the filter: one per quiet period, resolution only after a warning', () => {
  const f = new NotificationFilter(1000);
  const w = (object: string, message = 'm'): ControllerEvent => ({ name: 'x-failed', type: 'Warning', object, message, time: '' });
  const ok = (object: string): ControllerEvent => ({ name: 'x-ok', type: 'Normal', object, message: 'fine', time: '' });
  expect(f.decide(w('a'), 0)).toBe('warning');
  expect(f.decide(w('a'), 999)).toBeUndefined();
  expect(f.decide(w('a'), 1000)).toBe('warning');
  expect(f.decide(w('a', 'other'), 1001)).toBe('warning');
  expect(f.decide(ok('b'), 1002)).toBeUndefined();
  expect(f.decide(ok('a'), 1003)).toBe('resolved');
  expect(f.decide(ok('a'), 1004)).toBeUndefined();
  expect(f.decide(w('a'), 1005)).toBe('warning');
});
