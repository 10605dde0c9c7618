/**
 * Idle cost of the controller (issue 5): 200 Module instances in a watched manifests directory,
 * the controller running as its own process (dist/src/cli/bin.js, default settings: 10 min
 * resync, HTTP endpoint, leader lease renewals); once it has converged, its CPU% and RSS are
 * measured from /proc over a bounded window: 60 s (issue 5), or BENCH_IDLE_SECONDS=N (e.g. 20 for
 * a quick look). BENCH_INSTANCES=N changes the 200. Aim: under 1 % CPU, no busy loop (no
 * reconcile while idle).
 * Run: `npm run build && node dist/bench/idle-cost.js` (needs redis-server on PATH).
 */
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { startBenchRedis } from './support/redis.js';
import { emitResult } from './support/result.js';

const INSTANCES = Number(process.env.BENCH_INSTANCES ?? 200);
const WINDOW_S = Number(process.env.BENCH_IDLE_SECONDS ?? 60);
const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/bin.js');

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function cpuTicks(pid: number): number {
  // Fields after the command name (which may hold spaces): utime is the 14th field, stime the 15th.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(rest[11]) + Number(rest[12]);
}

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-idle-'));
  const m = path.join(dir, 'm');
  mkdirSync(m);
  writeFileSync(path.join(m, 'nodes.yaml'), [1, 2, 3].map((n) => `apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: {name: node${n}}\nspec: {id: ${n}}\n`).join('---\n'));
  for (let i = 1; i <= INSTANCES; i++) {
    writeFileSync(path.join(m, `webapp${i}.yaml`), `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: webapp${i}\nspec:\n  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.0.${i % 3}\n  node: ${(i % 3) + 1}\n  configuration: {title: "Wiki ${i}", admin_password: "secret-${i}"}\n`);
  }
  const srv = await startBenchRedis();
  const redis = new Redis(srv.port, '127.0.0.1');
  const hz = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  let reconciles = 0;
  const child = spawn(process.execPath, [BIN, '--redis', `redis://127.0.0.1:${srv.port}`, '--state-dir', path.join(dir, 'state'), 'controller', '-f', m, '--http-port', '0', '--log-format', 'json'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  child.stderr!.on('data', (b: Buffer) => {
    reconciles += (b.toString().match(/"msg":"reconciled"/g) ?? []).length;
  });
  try {
    const pid = child.pid as number;
    // Converged: every module has a summary and no reconcile ran for 2 s.
    const deadline = Date.now() + 120_000;
    for (;;) {
      const summaries = (await redis.keys('ns8ctl/conditions/module/*')).length;
      const before = reconciles;
      await sleep(2000);
      if (summaries >= INSTANCES && reconciles === before) break;
      if (Date.now() > deadline) throw new Error(`did not converge within 120 s (${summaries} summaries)`);
    }
    const startReconciles = reconciles;
    const t0 = performance.now();
    const c0 = cpuTicks(pid);
    const rss: number[] = [];
    for (let s = 0; s < WINDOW_S; s++) {
      await sleep(1000);
      rss.push(rssMb(pid));
    }
    const seconds = (performance.now() - t0) / 1000;
    const cpu = ((cpuTicks(pid) - c0) / hz / seconds) * 100;
    const idleReconciles = reconciles - startReconciles;
    console.log(`ns8ctl idle cost: controller with ${INSTANCES} Module instances, ${seconds.toFixed(0)} s window, node ${process.version}`);
    console.log(`CPU: ${cpu.toFixed(2)} % of one core (aim < 1 %: ${(cpu / 1).toFixed(2)}x of budget)`);
    console.log(`RSS: ${Math.min(...rss).toFixed(0)}-${Math.max(...rss).toFixed(0)} MB`);
    emitResult({
      bench: 'idle-cost',
      sizes: { instances: INSTANCES, seconds: WINDOW_S },
      figures: [
        { what: `controller CPU, idle with ${INSTANCES} instances`, value: cpu, unit: '% of a core', aim: 1 },
        { what: 'controller RSS, idle (max)', value: Math.max(...rss), unit: 'MB' },
        { what: 'reconciles while idle', value: idleReconciles, unit: 'reconciles', aim: 0 },
      ],
    });
    console.log(`reconciles while idle: ${idleReconciles} (no polling: triggers are inotify and Redis notifications; resync every 10 min)`);
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
    redis.disconnect();
    srv.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
