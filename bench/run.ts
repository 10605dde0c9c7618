/**
 * Core benchmark (issue 2): 1,000 Module manifests. Phases: cold validate + plan, apply into an
 * empty Redis, no-op diff, no-op apply. Prints wall time, Redis round trips per phase (counted by
 * a loopback proxy) and peak RSS; then what a user sees: the no-op diff as a new `ns8ctl` process
 * (startup, module loading and all), and `ns8ctl --help`. Run: `npm run bench` (needs redis-server
 * on PATH).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { applyPlan, preparePlan } from '../src/apply/pipeline.js';
import { ProcessRunner } from '../src/host/runner.js';
import { isEmpty } from '../src/plan/planner.js';
import { startBenchRedis, startRoundTripCounter } from './support/redis.js';
import { emitResult } from './support/result.js';
import { writeBenchManifests } from './support/manifests.js';

const N = Number(process.env.BENCH_MODULES ?? 1000);

/** Wall time of `fn` in ms, with its result. */
async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = performance.now();
  const value = await fn();
  return { ms: performance.now() - t0, value };
}

/** Round trips `fn` makes, counted by the proxy. */
async function roundTrips(counter: { take: () => number }, fn: () => Promise<unknown>): Promise<number> {
  counter.take();
  await fn();
  return counter.take();
}

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-bench-'));
  writeBenchManifests(dir, N);
  const srv = await startBenchRedis();
  const counter = await startRoundTripCounter(srv.port);
  // Times are taken on a direct connection: the counting proxy copies every byte in this process
  // and would inflate read-heavy phases. Round trips are counted afterwards by the same work
  // through the proxy (db 1 for the phases that need an empty Redis), after peak RSS is read.
  const direct = new Redis(srv.port, '127.0.0.1');
  const counted = new Redis(counter.port, '127.0.0.1');
  await Promise.all([direct.ping(), counted.ping()]);
  const runner = new ProcessRunner();
  const opts = { applySet: 'default', prune: false };
  const noopApply = async (r: Redis): Promise<void> => {
    const p = await preparePlan([dir], r, opts);
    if (!isEmpty(p.plan)) await applyPlan(p, r, { ...opts, forcePrune: false, runner });
  };
  try {
    const cold = await timed(() => preparePlan([dir], direct, opts));
    if (cold.value.plan.summary.create !== N + 3) throw new Error(`expected ${N + 3} creates, got ${cold.value.plan.summary.create}`);
    const apply = await timed(() => applyPlan(cold.value, direct, { ...opts, forcePrune: false, runner }));
    const noop = await timed(() => preparePlan([dir], direct, opts));
    if (!isEmpty(noop.value.plan)) throw new Error('no-op diff found changes');
    const noApply = await timed(() => noopApply(direct));
    const rssMb = process.resourceUsage().maxRSS / 1024;
    await counted.select(1);
    let fresh: Awaited<ReturnType<typeof preparePlan>> | undefined;
    const coldTrips = await roundTrips(counter, async () => (fresh = await preparePlan([dir], counted, opts)));
    const applyTrips = await roundTrips(counter, () => applyPlan(fresh!, counted, { ...opts, forcePrune: false, runner }));
    await counted.select(0);
    const noopTrips = await roundTrips(counter, () => preparePlan([dir], counted, opts));
    const noApplyTrips = await roundTrips(counter, () => noopApply(counted));
    const rows: string[][] = [
      ['cold validate + plan', cold.ms.toFixed(0), String(coldTrips)],
      ['apply into empty Redis', apply.ms.toFixed(0), String(applyTrips)],
      ['no-op diff', noop.ms.toFixed(0), String(noopTrips)],
      ['no-op apply', noApply.ms.toFixed(0), String(noApplyTrips)],
    ];
    // The same no-op diff as a user runs it: a new process (median of 3), and --help for startup alone.
    const bin = path.resolve(import.meta.dirname, '../src/cli/bin.js');
    const wall = (args: string[], ok: number[]): number => {
      const t0 = performance.now();
      try {
        execFileSync(process.execPath, [bin, ...args], { stdio: 'ignore', env: { ...process.env, NS8CTL_OFFLINE: '1' } });
      } catch (err) {
        if (!ok.includes((err as { status?: number }).status ?? -1)) throw err;
      }
      return performance.now() - t0;
    };
    const median = (f: () => number): number => [f(), f(), f()].sort((a, b) => a - b)[1]!;
    const cliDiff = median(() => wall(['--redis', `redis://127.0.0.1:${srv.port}`, 'diff', '-f', dir], [0]));
    const cliHelp = median(() => wall(['--help'], [0]));
    const cliDiffHelp = median(() => wall(['diff', '--help'], [0]));
    rows.push(['no-op diff (new process)', cliDiff.toFixed(0), '-'], ['ns8ctl diff --help', cliDiffHelp.toFixed(0), '-'], ['ns8ctl --help (all areas)', cliHelp.toFixed(0), '-']);
    const width = [27, 10, 12];
    const line = (r: string[]): string => r.map((c, i) => (i === 0 ? c.padEnd(width[i]!) : c.padStart(width[i]!))).join('');
    console.log(`ns8ctl core benchmark: ${N} Module manifests (+3 Nodes), node ${process.version}`);
    console.log(line(['phase', 'ms', 'round trips']));
    for (const r of rows) console.log(line(r));
    console.log(`peak RSS: ${rssMb.toFixed(0)} MB (aim < 150 MB: ${(rssMb / 150).toFixed(2)}x of budget)`);
    console.log(`no-op diff: ${noop.ms.toFixed(0)} ms (aim < 300 ms: ${(noop.ms / 300).toFixed(2)}x of budget), round trips constant in N`);
    emitResult({
      bench: 'core',
      sizes: { modules: N },
      figures: [
        { what: `cold validate + plan of ${N}`, value: cold.ms, unit: 'ms' },
        { what: `apply ${N} into empty Redis`, value: apply.ms, unit: 'ms' },
        { what: `no-op diff of ${N} (in process)`, value: noop.ms, unit: 'ms', aim: 300 },
        { what: `no-op diff of ${N} (new process)`, value: cliDiff, unit: 'ms', aim: 300 },
        { what: `no-op diff round trips`, value: noopTrips, unit: 'round trips' },
        { what: 'peak RSS', value: rssMb, unit: 'MB', aim: 150 },
      ],
    });
  } finally {
    counted.disconnect();
    direct.disconnect();
    counter.close();
    srv.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
