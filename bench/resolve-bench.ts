/**
 * Resolution benchmark (issue 6): one repository with 500 modules x 20 versions, served over
 * loopback HTTP and cached in a real Redis. Phases: first load (download + validate + cache
 * write), cache load in a "new process" (parse + validate from Redis), listing the available
 * modules, resolving every module three ways (latest, range, exact), and the node agent's
 * per-call resolveImage on a warm cache. Prints ms per phase and per operation (pure phases: the
 * median of 5 runs).
 * Run: `npm run build && node dist/bench/resolve-bench.js` (needs redis-server on PATH).
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import { forgetParsedRepodata, getRepodata, refreshRepositories } from '../src/repository/fetch.js';
import { makeImageResolver } from '../src/repository/image-resolver.js';
import type { RepodataPackage } from '../src/repository/repodata.js';
import { listAvailable, resolveVersion, type RepositoryInfo } from '../src/repository/resolve.js';
import { keys } from '../src/state/keys.js';
import { emitResult } from './support/result.js';
import { startBenchRedis } from './support/redis.js';

const MODULES = Number(process.env.BENCH_REPO_MODULES ?? 500);
const VERSIONS = Number(process.env.BENCH_REPO_VERSIONS ?? 20);
const CORE = '3.21.0';

/** 20 versions per module: 1.0.0 .. 1.9.0, 2.0.0 .. 2.8.0 and one prerelease; realistic labels. */
function makeRepodata(): RepodataPackage[] {
  const out: RepodataPackage[] = [];
  for (let m = 0; m < MODULES; m++) {
    const id = `module${m}`;
    const versions: RepodataPackage['versions'] = [];
    for (let v = 0; v < VERSIONS; v++) {
      const prerelease = v === VERSIONS - 1;
      const major = 1 + Math.floor(v / 10);
      const tag = prerelease ? `${major + 1}.0.0-rc.1` : `${major}.${v % 10}.0`;
      versions.push({
        tag,
        testing: prerelease,
        labels: {
          'org.nethserver.rootfull': '0',
          'org.nethserver.tcp-ports-demand': '1',
          'org.nethserver.images': `ghcr.io/bench/${id}-app:${tag} docker.io/library/redis:7.2`,
          'org.nethserver.authorizations': 'traefik@node:routeadm cluster:accountconsumer',
          'org.nethserver.min-core': v % 7 === 6 ? '99.0.0' : '3.2.0-0',
          ...(major > 1 ? { 'org.nethserver.min-from': '1.5.0' } : {}),
          'io.buildah.version': '1.33.7',
        },
      });
    }
    versions.reverse();
    out.push({
      id,
      name: `Module ${m}`,
      description: { en: `Benchmark module number ${m}`, it: `Modulo di prova numero ${m}` },
      logo: 'logo.png',
      screenshots: ['screenshots/1.png'],
      categories: ['bench'],
      authors: [{ name: 'Bench', email: 'bench@example.org' }],
      docs: { documentation_url: 'https://example.org/d', bug_url: 'https://example.org/b', code_url: 'https://example.org/c' },
      source: `ghcr.io/bench/${id}`,
      versions,
    });
  }
  return out;
}

/** Runs `fn` `runs` times and records the median duration (the first run includes JIT warm-up). */
async function timed<T>(rows: string[][], name: string, ops: number, fn: () => Promise<T> | T, runs = 1): Promise<T> {
  const times: number[] = [];
  let value: T | undefined;
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    value = await fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const ms = times[Math.floor(times.length / 2)] ?? 0;
  rows.push([name + (runs > 1 ? ` (median of ${runs})` : ''), ms.toFixed(1), String(ops), ((ms * 1000) / ops).toFixed(1)]);
  return value as T;
}

async function main(): Promise<void> {
  const text = JSON.stringify(makeRepodata());
  const http = createServer((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'application/json', 'Last-Modified': new Date(0).toUTCString() });
    res.end(text);
  });
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}/`;
  const srv = await startBenchRedis();
  const redis = new Redis({ port: srv.port, host: '127.0.0.1', maxRetriesPerRequest: 1 });
  const repo: RepositoryInfo = { name: 'default', url, enabled: true, testing: false };
  await redis.hset(keys.repository('default'), { url, status: '1', testing: '0' });
  const rows: string[][] = [];
  try {
    await refreshRepositories(redis);
    const first = await timed(rows, 'download + validate + cache', 1, () => getRepodata(redis, repo));
    if (first.origin !== 'network') throw new Error('expected a download');
    forgetParsedRepodata();
    const cached = await timed(rows, 'cache load (new process)', 1, () => getRepodata(redis, repo));
    if (cached.origin !== 'cache') throw new Error('expected the cache');
    const available = await timed(rows, 'list available', 1, () => listAvailable([cached], { coreVersion: CORE }), 5);
    const names = available.map((m) => m.id);
    await timed(rows, 'resolve latest', names.length, () => names.forEach((n) => resolveVersion(n, 'latest', available)), 5);
    await timed(rows, 'resolve range ^1.2', names.length, () => names.forEach((n) => resolveVersion(n, '^1.2', available)), 5);
    await timed(rows, 'resolve exact 1.3.0', names.length, () => names.forEach((n) => resolveVersion(n, '1.3.0', available)), 5);
    const resolveImage = makeImageResolver(redis, { coreVersion: CORE });
    await resolveImage({ module: 'module0' });
    await timed(rows, 'resolveImage (warm, Redis)', names.length, async () => {
      for (const n of names) await resolveImage({ module: n, version: '^2' });
    });
    const width = [40, 10, 8, 12];
    const line = (r: string[]): string => r.map((c, i) => (i === 0 ? c.padEnd(width[i] ?? 0) : c.padStart(width[i] ?? 0))).join('');
    console.log(`ns8ctl resolution benchmark: ${MODULES} modules x ${VERSIONS} versions, repodata ${(text.length / 1024 / 1024).toFixed(1)} MiB, node ${process.version}`);
    console.log(line(['phase', 'ms', 'ops', 'us/op']));
    for (const r of rows) console.log(line(r));
    emitResult({ bench: 'resolve', sizes: { modules: MODULES, versions: VERSIONS }, figures: rows.map((r) => ({ what: r[0]!, value: Number(r[1]), unit: 'ms' })) });
    console.log(`offered versions per module: ${available[0]?.versions.length ?? 0} (of ${VERSIONS}: prerelease and min-core 99 hidden)`);
  } finally {
    redis.disconnect();
    srv.stop();
    http.close();
  }
}

await main();
