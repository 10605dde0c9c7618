/**
 * CLI startup against the floor of the platform: `node -e 0` (a process that loads nothing),
 * then `ns8ctl --help`, `ns8ctl diff --help`, `ns8ctl validate -f manifests/ --offline`, and, against
 * a throwaway redis-server holding the example manifests, `ns8ctl get modules` and the no-op
 * `ns8ctl diff -f manifests/`; and the no-op diff of BENCH_DIFF_MODULES (1,000; 20 in smoke runs)
 * Module manifests (the core bench's set, in database 1): each a new process. The cases run in
 * turn, round after round (BENCH_REPEAT rounds, default 7), so a change of machine load hits
 * every case alike; each figure is the median of its runs, printed with its ratio to the floor's
 * median. Aims: --help <= 1.5x, validate, get and diff <= 2x the floor; the big no-op diff
 * <= 300 ms. Each process (the floor's too) also reports its own CPU time (user + system, from
 * a preloaded exit hook), printed with its ratio to the floor's: on a machine busy with other
 * work, wall times stretch with the load while CPU times barely move; the least CPU time of each
 * case's rounds is printed beside them.
 * The CLI runs from its bundle with a V8 code cache (src/cli/code-cache.ts) kept in a cache
 * directory of this run (XDG_CACHE_HOME): each case runs once untimed first, as a user's first
 * run of a command writes its cache. The two diffs also run from the compiled modules
 * (NS8CTL_BUNDLE=off, how the CLI started before the bundle), printed without an aim, so each run
 * shows what the bundle and its cache save on this machine.
 * Run: `npm run build && node scripts/bundle-cli.mjs && node dist/bench/cli-startup.js`.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { bundleIsCurrent, defaultBundlePaths } from '../src/cli/code-cache.js';
import { writeBenchManifests } from './support/manifests.js';
import { startBenchRedis } from './support/redis.js';
import { emitResult, type Figure } from './support/result.js';

const REPEAT = Math.max(1, Number(process.env.BENCH_REPEAT ?? 7));
const MODULES = Math.max(1, Number(process.env.BENCH_DIFF_MODULES ?? (process.env.BENCH_SMOKE ? 20 : 1000)));
const bin = path.resolve(import.meta.dirname, '../src/cli/bin.js');
const manifests = path.resolve(import.meta.dirname, '../../manifests');

function median(xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
}

async function main(): Promise<void> {
  const bundled = bundleIsCurrent(defaultBundlePaths(pathToFileURL(bin).href));
  const stateDir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-bench-startup-'));
  const many = path.join(stateDir, 'manifests');
  writeBenchManifests(many, MODULES);
  const srv = await startBenchRedis();
  const env = { ...process.env, NS8CTL_OFFLINE: '1', NS8CTL_STATE_DIR: stateDir, XDG_CACHE_HOME: path.join(stateDir, 'cache') };
  const redis = ['--redis', `redis://127.0.0.1:${srv.port}`];
  const redis1 = ['--redis', `redis://127.0.0.1:${srv.port}/1`];
  // Preloaded in every measured process: its CPU time at exit, in ms, written where the bench reads it.
  const cpuHook = path.join(stateDir, 'cpu-hook.cjs');
  const cpuFile = path.join(stateDir, 'cpu.txt');
  writeFileSync(cpuHook, `process.on('exit', () => { const u = process.cpuUsage(); require('node:fs').writeFileSync(${JSON.stringify(cpuFile)}, String((u.user + u.system) / 1000)); });\n`);
  const measure = (argv: string[], extraEnv: Record<string, string> = {}): { wall: number; cpu: number } => {
    const t0 = performance.now();
    execFileSync(process.execPath, ['-r', cpuHook, ...argv], { stdio: 'ignore', env: { ...env, ...extraEnv } });
    const wall = performance.now() - t0;
    return { wall, cpu: Number(readFileSync(cpuFile, 'utf8')) };
  };
  try {
    // The examples in Redis, so get lists them and diff compares them (and finds nothing to do).
    execFileSync(process.execPath, [bin, ...redis, 'apply', '-f', manifests], { stdio: 'ignore', env });
    execFileSync(process.execPath, [bin, ...redis1, 'apply', '-f', many], { stdio: 'ignore', env });
    const floorCase = { what: 'node -e 0 (floor)', argv: ['-e', '0'], aimRatio: 0 };
    const modules = { NS8CTL_BUNDLE: 'off' };
    const cases: { what: string; argv: string[]; aimRatio: number; aimMs?: number; env?: Record<string, string> }[] = [
      floorCase,
      { what: 'ns8ctl --help', argv: [bin, '--help'], aimRatio: 1.5 },
      { what: 'ns8ctl diff --help', argv: [bin, 'diff', '--help'], aimRatio: 1.5 },
      { what: 'ns8ctl validate -f manifests/ --offline', argv: [bin, 'validate', '-f', manifests, '--offline'], aimRatio: 2 },
      { what: 'ns8ctl get modules', argv: [bin, ...redis, 'get', 'modules'], aimRatio: 2 },
      { what: 'ns8ctl diff -f manifests/ (no-op)', argv: [bin, ...redis, 'diff', '-f', manifests], aimRatio: 2 },
      { what: `ns8ctl diff of ${MODULES} manifests (no-op)`, argv: [bin, ...redis1, 'diff', '-f', many], aimRatio: 0, aimMs: 300 },
      { what: 'diff -f manifests/, compiled modules', argv: [bin, ...redis, 'diff', '-f', manifests], aimRatio: 0, env: modules },
      { what: `diff of ${MODULES}, compiled modules`, argv: [bin, ...redis1, 'diff', '-f', many], aimRatio: 0, env: modules },
    ];
    const runs = new Map(cases.map((c) => [c, { wall: [] as number[], cpu: [] as number[] }]));
    // Untimed: the first run of each command writes its code cache.
    for (const c of cases) measure(c.argv, c.env);
    for (let i = 0; i < REPEAT; i++) {
      for (const c of cases) {
        const m = measure(c.argv, c.env);
        runs.get(c)!.wall.push(m.wall);
        runs.get(c)!.cpu.push(m.cpu);
      }
    }
    const floor = median(runs.get(floorCase)!.wall);
    const floorCpu = median(runs.get(floorCase)!.cpu);
    const figures: Figure[] = [
      { what: 'node -e 0 (floor)', value: floor, unit: 'ms' },
      { what: 'node -e 0 (floor), CPU', value: floorCpu, unit: 'ms' },
    ];
    console.log(`ns8ctl CLI startup, median of ${REPEAT} rounds, node ${process.version}`);
    console.log(bundled ? 'CLI bundle: current (code cache in this run\'s XDG_CACHE_HOME)' : 'CLI bundle: MISSING or older than the last tsc build (run: node scripts/bundle-cli.mjs): every case ran from the compiled modules');
    // The least CPU time of the rounds is printed too: on a machine whose load comes and goes
    // within one run it is the figure closest to the cost of the work itself.
    const least = (c: (typeof cases)[number]): string => `least ${Math.min(...runs.get(c)!.cpu).toFixed(0)} ms`;
    console.log(`${'node -e 0 (floor)'.padEnd(42)} ${floor.toFixed(0).padStart(6)} ms         CPU ${floorCpu.toFixed(0).padStart(5)} ms        (${least(floorCase)})`);
    for (const c of cases.slice(1)) {
      const ms = median(runs.get(c)!.wall);
      const cpu = median(runs.get(c)!.cpu);
      const judged = c.aimMs !== undefined || c.aimRatio > 0;
      figures.push({ what: c.what, value: ms, unit: 'ms', ...(judged ? { aim: c.aimMs ?? floor * c.aimRatio } : {}), versus: { what: 'node -e 0', value: floor } });
      figures.push({ what: `${c.what}, CPU`, value: cpu, unit: 'ms', ...(c.aimMs === undefined && judged ? { aim: floorCpu * c.aimRatio } : {}), versus: { what: 'node -e 0, CPU', value: floorCpu } });
      const aim = c.aimMs !== undefined ? `aim <= ${c.aimMs} ms` : judged ? `aim <= ${c.aimRatio}x` : 'NS8CTL_BUNDLE=off, no aim';
      console.log(`${c.what.padEnd(42)} ${ms.toFixed(0).padStart(6)} ms ${(ms / floor).toFixed(2).padStart(5)}x  CPU ${cpu.toFixed(0).padStart(5)} ms ${(cpu / floorCpu).toFixed(2).padStart(5)}x the floor (${aim}; ${least(c)})`);
    }
    emitResult({ bench: 'cli-startup', sizes: { repeat: REPEAT, modules: MODULES, bundle: bundled ? 1 : 0 }, figures });
  } finally {
    srv.stop();
    rmSync(stateDir, { recursive: true, force: true });
  }
}

await main();
