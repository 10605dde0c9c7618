/**
 * Node agent benchmark, on the real host: real redis-server, a loopback registry with the
 * example module images (built and pushed by examples/modules/build-images.sh), real useradd and
 * rootless podman. Phases:
 *  1. converge 20 instances of the example module with the agent's bounded concurrency, then the
 *     same 20 sequentially (concurrency 1: the same commands one after another): wall times, ratio,
 *     how many times the module image was fetched into the node cache (once), and the share of
 *     command time per step kind;
 *  2. a no-op reconcile of 200 converged instances: wall time, processes spawned, Redis round trips;
 *  3. the same with `module:` specs resolved through a file:// repository (one catalogue load per pass).
 * Instances are removed (data deleted) at the end. Needs root, podman, skopeo, docker-registry and
 * redis-server. Run: `npm run build && node dist/bench/node-agent-converge.js`
 * (BENCH_CONVERGE_INSTANCES, BENCH_NOOP_INSTANCES, BENCH_CONCURRENCY change the sizes).
 */
import { existsSync, mkdtempSync, rmSync, chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import { ProcessRunner, type CommandRecord, type CommandRunner, type RunOptions } from '../src/host/runner.js';
import { createNodeAgentDeps, type NodeAgentDeps } from '../src/node-agent/deps.js';
import { imageCacheDir } from '../src/node-agent/host/podman.js';
import { defaultLayout } from '../src/node-agent/layout.js';
import { reconcileNodeOnce, type NodeReconcileResult } from '../src/node-agent/reconcile.js';
import { makeImageResolver } from '../src/repository/image-resolver.js';
import { keys } from '../src/state/keys.js';
import { preparePodmanHost } from '../test/support/host-podman.js';
import { startRegistry } from '../test/support/registry.js';
import { startBenchRedis, startRoundTripCounter } from './support/redis.js';
import { emitResult } from './support/result.js';

const CONVERGE = Number(process.env.BENCH_CONVERGE_INSTANCES ?? 20);
const NOOP = Number(process.env.BENCH_NOOP_INSTANCES ?? 200);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 4);

/** Counts every spawned command with its purpose and duration. */
class CountingRunner implements CommandRunner {
  readonly records: (CommandRecord & { mutating: boolean })[] = [];
  private readonly inner = new ProcessRunner(10);
  get history(): readonly (CommandRecord & { mutating: boolean })[] {
    return this.records;
  }
  async run(argv: string[], opts: RunOptions = {}): Promise<CommandRecord & { stdoutBuffer?: Buffer }> {
    try {
      return await this.inner.run(argv, opts);
    } finally {
      const last = this.inner.history[this.inner.history.length - 1];
      if (last) this.records.push(last);
    }
  }
}

function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'examples', 'modules', 'build-images.sh'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('examples/modules/build-images.sh not found above the benchmark');
    dir = up;
  }
  return dir;
}

function table(rows: string[][]): string {
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ')).join('\n');
}

async function putModules(redis: Redis, ids: string[], image: string, spec: Record<string, string> = { image }): Promise<void> {
  const p = redis.pipeline();
  for (const id of ids) {
    const object = JSON.stringify({ apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: id }, spec: { node: 1, ...spec, removalPolicy: 'Delete' } });
    p.hset(keys.desired('Module', id), { object, generation: '1', source: 'bench.yaml', revision: '', applyset: 'default' });
    p.sadd(keys.desiredIndex('Module'), id);
    p.hset(keys.moduleUuid(), id, `00000000-0000-4000-8000-${String(ids.indexOf(id)).padStart(12, '0')}`);
    p.hset(keys.moduleNode(), id, '1');
  }
  await p.exec();
}

async function deleteModules(redis: Redis, ids: string[]): Promise<void> {
  const p = redis.pipeline();
  for (const id of ids) p.hset(keys.desired('Module', id), 'deleting', '{"removalPolicy":"Delete"}');
  await p.exec();
}

function check(result: NodeReconcileResult, what: string): void {
  const bad = result.instances.filter((i) => i.error);
  if (bad.length) throw new Error(`${what}: ${bad.map((i) => `${i.id}: ${i.error!.message}`).join('\n')}`);
}

/** Busy and total CPU time of the whole host so far (the `cpu` line of /proc/stat, in clock ticks). */
function hostCpu(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), total };
}

async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = performance.now();
  const value = await fn();
  return { ms: performance.now() - t0, value };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the node agent benchmark creates Unix users: run it as root');
  await preparePodmanHost();
  const root = repoRoot();
  const work = mkdtempSync(path.join(tmpdir(), 'ns8ctl-bench-node-agent-'));
  chmodSync(work, 0o755);
  mkdirSync(path.join(work, 'home'), { mode: 0o755 });
  const srv = await startBenchRedis();
  const counter = await startRoundTripCounter(srv.port);
  const registry = await startRegistry();
  const host = new ProcessRunner();
  const redis = new Redis(counter.port, '127.0.0.1');
  const all: string[] = [];
  const out: string[] = [];
  try {
    process.stderr.write(`building and pushing the example images to ${registry.address} ...\n`);
    const built = await host.run([path.join(root, 'examples', 'modules', 'build-images.sh'), '--registry', registry.address, '--push'], { timeoutMs: 600_000 });
    const image = `${registry.address}/ns8ctl-examples/webapp:1.0.0`;
    await host.run(['podman', 'rmi', '--ignore', ...built.stdout.split('\n').filter(Boolean)], { allowFailure: true });

    const layout = defaultLayout({
      homeBase: path.join(work, 'home'),
      rootfullBase: path.join(work, 'nethserver'),
      uiBase: path.join(work, 'ui'),
      agentStateDir: path.join(work, 'agent'),
      systemUnitDir: path.join(work, 'units'),
      lingerDir: path.join(work, 'linger'),
      systemdRunDir: existsSync('/run/systemd/system') ? '/run/systemd/system' : path.join(work, 'no-systemd'),
    });
    const make = (concurrency: number, runner: CountingRunner): { deps: NodeAgentDeps; opts: { node: number; concurrency: number; insecureRegistries: string[] } } => {
      const opts = { node: 1, concurrency, insecureRegistries: [registry.address] };
      return { opts, deps: createNodeAgentDeps(opts, { redis, runner, layout, log: () => undefined }) };
    };

    // ---- 1. converge: bounded concurrency vs sequential ----
    const ids = Array.from({ length: CONVERGE }, (_, i) => `nabench${i + 1}`);
    all.push(...ids);
    const shares = new Map<string, number>();
    const rows = [['phase', 'instances', 'wall ms', 'commands', 'ms/instance']];
    const cpuRows = [['phase', 'host CPU s/instance', 'agent process CPU s/instance']];
    let parallelMs = 0;
    let sequentialMs = 0;
    // How many of the host's cores the sequential run kept busy: concurrency cannot beat
    // cores / busy cores (the work left per instance is CPU work of short-lived processes).
    let sequentialBusyCores = 0;
    // The module image goes into the node cache once per run (skopeo copy), whatever the instances.
    let fetches = 0;
    // Service images: once per run into the node's service-image cache, then imported per user.
    let serviceFetches = 0;
    let userPulls = 0;
    for (const concurrency of [CONCURRENCY, 1]) {
      const runner = new CountingRunner();
      const { deps, opts } = make(concurrency, runner);
      // Both runs start from an empty node cache: each fetches the images once, side by side.
      rmSync(imageCacheDir(layout), { recursive: true, force: true });
      rmSync(layout.serviceImageCacheDir, { recursive: true, force: true });
      await putModules(redis, ids, image);
      const cpu0 = hostCpu();
      const own0 = process.cpuUsage();
      const r = await timed(() => reconcileNodeOnce(opts, deps));
      const own = process.cpuUsage(own0);
      const cpu1 = hostCpu();
      // CPU seconds: the whole host's (every process the pass spawned) and the agent's own (this process).
      const hostBusyS = ((cpu1.busy - cpu0.busy) / Math.max(1, cpu1.total - cpu0.total)) * cpus().length * (r.ms / 1000);
      cpuRows.push([`converge, concurrency ${concurrency}`, (hostBusyS / ids.length).toFixed(3), ((own.user + own.system) / 1e6 / ids.length).toFixed(3)]);
      if (concurrency === 1) sequentialBusyCores = ((cpu1.busy - cpu0.busy) / Math.max(1, cpu1.total - cpu0.total)) * cpus().length;
      check(r.value, 'converge');
      rows.push([`converge, concurrency ${concurrency}`, String(ids.length), r.ms.toFixed(0), String(runner.records.length), (r.ms / ids.length).toFixed(0)]);
      if (concurrency === 1) {
        sequentialMs = r.ms;
        for (const c of runner.records) {
          const kind = (c.purpose ?? 'other').replace(/^[^:]*: /, '').replace(/ \(.*$/, '').split(' ')[0]!;
          shares.set(kind, (shares.get(kind) ?? 0) + c.durationMs);
        }
      } else {
        parallelMs = r.ms;
        const copies = runner.records.filter((c) => c.argv[0] === 'skopeo' && c.argv[1] === 'copy');
        fetches = copies.filter((c) => !/service-image cache/.test(c.purpose ?? '')).length;
        serviceFetches = copies.length - fetches;
        userPulls = runner.records.filter((c) => c.argv[0] === 'runuser' && c.argv.includes('podman') && c.argv.includes('pull')).length;
      }
      await deleteModules(redis, ids);
      const rm = await timed(() => reconcileNodeOnce(opts, deps));
      check(rm.value, 'removal');
      rows.push([`remove (data deleted), concurrency ${concurrency}`, String(ids.length), rm.ms.toFixed(0), String(runner.records.length), (rm.ms / ids.length).toFixed(0)]);
    }
    out.push(table(rows));
    out.push(table(cpuRows));
    out.push(`bounded concurrency (${CONCURRENCY}) vs sequential: ${(sequentialMs / parallelMs).toFixed(2)}x faster (${sequentialMs.toFixed(0)} ms -> ${parallelMs.toFixed(0)} ms)`);
    out.push(`the sequential run kept ${sequentialBusyCores.toFixed(2)} of the host's ${cpus().length} cores busy: no concurrency can beat ${(cpus().length / Math.max(0.01, sequentialBusyCores)).toFixed(2)}x here`);
    out.push(`module image fetched into the node cache ${fetches} time(s) for ${CONVERGE} instances (concurrency ${CONCURRENCY})`);
    out.push(`service image fetched into the node's service-image cache ${serviceFetches} time(s), pulled by instance users ${userPulls} time(s), for ${CONVERGE} instances (concurrency ${CONCURRENCY})`);
    const total = [...shares.values()].reduce((a, b) => a + b, 0);
    out.push('share of command time per step (sequential run):');
    out.push(table([['step', 'ms', 'share'], ...[...shares.entries()].sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, v.toFixed(0), `${((100 * v) / total).toFixed(1)}%`])]));

    // ---- 2. no-op reconcile of NOOP converged instances ----
    const many = Array.from({ length: NOOP }, (_, i) => `nabench${i + 1}`);
    all.push(...many.filter((id) => !all.includes(id)));
    const runner = new CountingRunner();
    const { deps, opts } = make(CONCURRENCY, runner);
    await putModules(redis, many, image);
    process.stderr.write(`converging ${NOOP} instances for the no-op phase ...\n`);
    const setup = await timed(() => reconcileNodeOnce(opts, deps));
    check(setup.value, 'converge for no-op');
    const before = runner.records.length;
    counter.take();
    const noop = await timed(() => reconcileNodeOnce(opts, deps));
    const trips = counter.take();
    const spawned = runner.records.length - before;
    const changed = noop.value.instances.filter((i) => i.outcome !== 'unchanged').length;
    out.push(
      table([
        ['phase', 'instances', 'wall ms', 'processes', 'redis round trips'],
        [`converge ${NOOP} (setup)`, String(NOOP), setup.ms.toFixed(0), String(before), '-'],
        ['no-op reconcile', String(NOOP), noop.ms.toFixed(0), String(spawned), String(trips)],
      ]),
    );
    out.push(`no-op reconcile: ${spawned} processes spawned for ${NOOP} instances (${changed} instance(s) changed), ${trips} Redis round trips`);

    // ---- 3. the same no-op reconcile with `module:` specs resolved through a repository ----
    // A file:// repository offering webapp 1.0.0 from the bench registry: the specs resolve to the
    // image the instances run, so the pass changes nothing; its extra cost is the resolution.
    const repoDir = path.join(work, 'repo');
    mkdirSync(repoDir);
    writeFileSync(path.join(repoDir, 'repodata.json'), JSON.stringify([{ id: 'webapp', name: 'webapp', description: { en: 'bench' }, logo: null, categories: ['bench'], authors: [{ name: 'bench' }], docs: { documentation_url: 'https://example.org', bug_url: 'https://example.org', code_url: 'https://example.org' }, source: image.replace(/:1\.0\.0$/, ''), versions: [{ tag: '1.0.0', testing: false, labels: {} }] }]));
    await redis.hset(keys.repository('bench'), { url: pathToFileURL(repoDir).href, status: '1', testing: '0' });
    await putModules(redis, many, image, { module: 'webapp', version: '1.0.0' });
    const resolving: NodeAgentDeps = { ...deps, resolveImage: makeImageResolver(redis, { coreVersion: '3.21.0' }) };
    check(await reconcileNodeOnce(opts, resolving), 'module specs (warm the repository cache)');
    const keyspace = await redis.dbsize();
    const beforeModule = runner.records.length;
    counter.take();
    const noopModule = await timed(() => reconcileNodeOnce(opts, resolving));
    const tripsModule = counter.take();
    const spawnedModule = runner.records.length - beforeModule;
    check(noopModule.value, 'no-op with module specs');
    out.push(
      `no-op reconcile with module: specs: ${noopModule.ms.toFixed(0)} ms, ${spawnedModule} processes, ${tripsModule} Redis round trips ` +
        `(${tripsModule - trips} for the one catalogue load: SCAN of ${keyspace} keys, repositories, cache probe; ${NOOP} instances)`,
    );
    await deleteModules(redis, many);
    const rm = await timed(() => reconcileNodeOnce(opts, deps));
    check(rm.value, 'removal');
    out.push(`removal of ${NOOP} instances (data deleted): ${rm.ms.toFixed(0)} ms`);
    process.stdout.write(out.join('\n\n') + '\n');
    emitResult({
      bench: 'node-agent-converge',
      sizes: { converge: CONVERGE, noop: NOOP, concurrency: CONCURRENCY },
      figures: [
        { what: `converge ${CONVERGE} instances, concurrency ${CONCURRENCY}`, value: parallelMs / 1000, unit: 's', aim: (8 * CONVERGE) / 20 },
        { what: `converge ${CONVERGE} instances, sequential`, value: sequentialMs / 1000, unit: 's' },
        { what: 'concurrent speed-up over sequential', value: sequentialMs / parallelMs, unit: 'x', aim: 3, higherIsBetter: true },
        { what: `cores busy during the sequential run (of ${cpus().length}, whole host)`, value: sequentialBusyCores, unit: 'cores' },
        { what: 'speed-up ceiling on this host: cores / cores busy when sequential', value: cpus().length / Math.max(0.01, sequentialBusyCores), unit: 'x' },
        { what: `module image fetches for ${CONVERGE} instances, concurrency ${CONCURRENCY}`, value: fetches, unit: 'fetches', aim: 1 },
        { what: `service image registry fetches for ${CONVERGE} instances, concurrency ${CONCURRENCY}`, value: serviceFetches + userPulls, unit: 'fetches', aim: 1 },
        { what: `no-op reconcile of ${NOOP}`, value: noop.ms, unit: 'ms' },
        { what: `no-op reconcile of ${NOOP}: processes`, value: spawned, unit: 'processes', aim: 0 },
        { what: `no-op reconcile of ${NOOP}: Redis round trips`, value: trips, unit: 'round trips' },
      ],
    });
  } finally {
    for (const id of all) {
      await host.run(['pkill', '-KILL', '-u', id], { allowFailure: true });
    }
    for (const id of all) await host.run(['userdel', '-f', id], { allowFailure: true });
    redis.disconnect();
    counter.close();
    srv.stop();
    await registry.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`node agent benchmark failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
