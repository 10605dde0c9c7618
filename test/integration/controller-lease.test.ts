/**
 * Leader election with real processes and a real Redis: of two controllers exactly one acts;
 * when the leader is killed with SIGKILL the other takes over (within the lease) and converges;
 * SIGTERM stops a leader cleanly and hands over at once. Spawns the built entry point
 * dist/src/cli/bin.js with plain node (`npm test` builds first).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { Controller } from '../../src/controller/controller.js';
import { LeaderElector } from '../../src/controller/leader-election.js';
import { createLogger } from '../../src/runtime/log.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait-for.js';

const BIN = path.resolve('dist/src/cli/bin.js');
const NODE = 'apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: {name: node1}\nspec: {id: 1}\n';
const mod = (tag: string): string => `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: webapp1\nspec:\n  image: 127.0.0.1:5000/ns8ctl-examples/webapp:${tag}\n  node: 1\n`;

interface Proc {
  child: ChildProcess;
  lines: () => Record<string, unknown>[];
  exited: Promise<number | null>;
}

describe('controller leader election', () => {
  let srv: TestRedis;
  let redis: Redis;
  let dir: string;
  let procs: Proc[];

  beforeAll(() => {
    if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`npm run build\` first (npm test does)`);
  });
  beforeEach(async () => {
    srv = await startRedis();
    redis = srv.client();
    dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-lease-'));
    mkdirSync(path.join(dir, 'm'));
    writeFileSync(path.join(dir, 'm', 'node.yaml'), NODE);
    writeFileSync(path.join(dir, 'm', 'wiki.yaml'), mod('1.0.0'));
    procs = [];
  });
  afterEach(async () => {
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited));
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  function controller(name: string): Proc {
    const child = spawn(process.execPath, [BIN, '--redis', srv.url, '--state-dir', path.join(dir, `state-${name}`), 'controller', '-f', path.join(dir, 'm'), '--lease', '2s', '--http-port', '0', '--log-format', 'json'], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { PATH: process.env.PATH, HOME: process.env.HOME },
    });
    let buf = '';
    const parsed: Record<string, unknown>[] = [];
    child.stderr!.on('data', (b: Buffer) => {
      buf += b.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          parsed.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          parsed.push({ msg: 'raw', line });
        }
      }
    });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const p = { child, lines: () => parsed, exited };
    procs.push(p);
    return p;
  }

  const holderPid = async (): Promise<number | undefined> => {
    const v = await redis.get('ns8ctl/controller/leader');
    return v ? Number(v.split(':')[1]) : undefined;
  };
  const started = (p: Proc): boolean => p.lines().some((l) => l.msg === 'controller started');
  const leads = (p: Proc): boolean => p.lines().some((l) => l.msg === 'became leader');
  const reconciles = (p: Proc): number => p.lines().filter((l) => l.msg === 'reconciled').length;
  const image = async (): Promise<string> => (JSON.parse((await redis.hget('ns8ctl/desired/module/webapp1', 'object')) ?? '{"spec":{}}') as { spec: { image?: string } }).spec.image ?? '';

  it('lets exactly one of two controllers act, and the other take over when the leader is killed', async () => {
    const a = controller('a');
    const b = controller('b');
    await waitFor('both started', () => started(a) && started(b));
    const pid = await waitFor('a lease holder', holderPid);
    const [leader, standby] = pid === a.child.pid ? [a, b] : [b, a];
    expect(pid).toBe(leader.child.pid);
    await waitFor('the leader applied the manifests', async () => (await image()).endsWith(':1.0.0'));
    await waitFor('the leader logged it', () => leads(leader) && reconciles(leader) > 0);
    expect(leads(standby)).toBe(false);
    expect(reconciles(standby)).toBe(0);

    leader.child.kill('SIGKILL');
    await leader.exited;
    await waitFor('the standby took over', async () => leads(standby) && (await holderPid()) === standby.child.pid);
    // The new leader acts on changes.
    const tmp = path.join(dir, 'm', '.wiki.yaml.tmp');
    writeFileSync(tmp, mod('2.0.0'));
    renameSync(tmp, path.join(dir, 'm', 'wiki.yaml'));
    await waitFor('the new leader converged', async () => (await image()).endsWith(':2.0.0'));
  });

  it('stops a leader cleanly on SIGTERM, releasing the lease to the standby at once', async () => {
    const a = controller('a');
    await waitFor('a leads', () => leads(a));
    const b = controller('b');
    await waitFor('b started', () => started(b));
    a.child.kill('SIGTERM');
    expect(await a.exited).toBe(0);
    expect(a.lines().some((l) => l.msg === 'controller stopped')).toBe(true);
    // Released (not expired): b holds it well before a 2 s lease could lapse on its own.
    await waitFor('b leads', async () => leads(b) && (await holderPid()) === b.child.pid);
  });

  it('never extends a lease another controller holds (compare-and-extend)', async () => {
    let stopped = 0;
    let leading = 0;
    const e = new LeaderElector({
      redis: srv.client(),
      identity: 'host:1:aaaaaa',
      leaseMs: 1200,
      onStartedLeading: () => void leading++,
      onStoppedLeading: () => void stopped++,
    });
    const run = e.run();
    await waitFor('leading', () => e.isLeader);
    // Someone else's lease replaces ours (e.g. ours expired during a pause and another took it).
    await redis.set('ns8ctl/controller/leader', 'host:2:bbbbbb', 'PX', 60_000);
    await waitFor('stepped down', () => !e.isLeader && stopped === 1);
    expect(await redis.get('ns8ctl/controller/leader')).toBe('host:2:bbbbbb');
    expect(await redis.pttl('ns8ctl/controller/leader')).toBeGreaterThan(30_000);
    await e.stop();
    await run;
    // Stopping did not delete the other's lease either.
    expect(await redis.get('ns8ctl/controller/leader')).toBe('host:2:bbbbbb');
    expect(leading).toBe(1);
  });

  it('stops acting before its lease can lapse when Redis stops answering a renewal', async () => {
    const client = srv.client();
    const pid = Number(/process_id:(\d+)/.exec(await redis.info('server'))?.[1]);
    expect(pid).toBeGreaterThan(0);
    let stopped = 0;
    const e = new LeaderElector({ redis: client, identity: 'host:1:cccccc', leaseMs: 1500, onStartedLeading: () => undefined, onStoppedLeading: () => void stopped++ });
    const run = e.run();
    await waitFor('leading', () => e.isLeader);
    process.kill(pid, 'SIGSTOP'); // the test's own redis-server: every command now hangs
    try {
      // Still frozen: the renewal never answered, yet the leader gave up on its own.
      await waitFor('stepped down while Redis hangs', () => !e.isLeader && stopped === 1, 10_000);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    // Redis answers again: the lease (still its own) is taken back.
    await waitFor('leading again', () => e.isLeader);
    await e.stop();
    await run;
    expect(await redis.exists('ns8ctl/controller/leader')).toBe(0);
  });

  it('stops cleanly while a reconcile hangs on a Redis that stopped answering', async () => {
    const pid = Number(/process_id:(\d+)/.exec(await redis.info('server'))?.[1]);
    const started: string[] = [];
    const c = new Controller(
      { sources: [{ name: 'default', kind: 'directory', paths: [path.join(dir, 'm')], prune: false, selfHeal: true }], resyncMs: 0, leaseMs: 1500, redisCommandTimeoutMs: 1000, configuration: false },
      { redis: srv.client(), runner: new ProcessRunner(), logger: createLogger('json', () => undefined), onReconcileStart: (k) => started.push(k) },
    );
    await c.start();
    let stopped = false;
    try {
      await waitFor('leading and idle', async () => c.isLeader && (await c.whenIdle(), true));
      process.kill(pid, 'SIGSTOP');
      const before = started.length;
      c.trigger('source/default');
      await waitFor('a reconcile running against the frozen Redis', () => started.length > before);
      await c.stop();
      stopped = true;
    } finally {
      process.kill(pid, 'SIGCONT');
      if (!stopped) await c.stop();
    }
    expect(c.isLeader).toBe(false);
  });
});
