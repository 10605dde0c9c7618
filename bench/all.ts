/**
 * Runs every benchmark, one child process each (so RSS and module loading are each bench's own):
 *   npm run bench:all     full sizes; writes bench/results.json and bench/results.md
 *   npm run bench:smoke   tiny sizes, no timing judged: proves every bench still runs (CI calls it)
 * A bench that exits non-zero or reports nothing fails the run (exit 1), so a broken bench cannot
 * go unnoticed. `--only NAME[,NAME]` runs some of them. Needs root, podman, skopeo,
 * docker-registry and redis-server (scripts/setup.sh test installs them).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ratioOf, type BenchResult, type Figure } from './support/result.js';

interface BenchSpec {
  name: string;
  script: string;
  args?: string[];
  /** Environment for full runs (defaults of the bench when empty) and for smoke runs. */
  full: Record<string, string>;
  smoke: Record<string, string>;
  /** Needs root (useradd, rootful podman); skipped with a note otherwise. */
  root?: boolean;
}

const BENCHES: BenchSpec[] = [
  { name: 'core', script: 'run.js', full: {}, smoke: { BENCH_MODULES: '20' } },
  { name: 'cli-startup', script: 'cli-startup.js', full: {}, smoke: { BENCH_REPEAT: '1' } },
  { name: 'resolve', script: 'resolve-bench.js', full: {}, smoke: { BENCH_REPO_MODULES: '10' } },
  { name: 'pickup-latency', script: 'pickup-latency.js', full: {}, smoke: { BENCH_CHANGES: '3' } },
  { name: 'idle-cost', script: 'idle-cost.js', full: {}, smoke: { BENCH_INSTANCES: '5', BENCH_IDLE_SECONDS: '2' } },
  { name: 'scale', script: 'scale.js', full: {}, smoke: { BENCH_SCALE_INSTANCES: '2' }, root: true },
  { name: 'node-agent-converge', script: 'node-agent-converge.js', full: {}, smoke: { BENCH_CONVERGE_INSTANCES: '2', BENCH_NOOP_INSTANCES: '3', BENCH_CONCURRENCY: '2' }, root: true },
];

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function fmt(n: number): string {
  return Math.abs(n) >= 100 ? n.toFixed(0) : Math.abs(n) >= 10 ? n.toFixed(1) : n.toFixed(2);
}

/** The markdown table of every figure, with aims, comparisons and ratios. */
export function renderMarkdown(results: BenchResult[], when: string): string {
  const rows = ['| bench | what | value | aim | ratio | compared with |', '|---|---|---|---|---|---|'];
  for (const r of results) {
    for (const f of r.figures as Figure[]) {
      const ratio = ratioOf(f);
      const vs = f.versus ? `${f.versus.what}: ${fmt(f.versus.value)} ${f.unit} (${fmt(f.value / f.versus.value)}x)` : '';
      rows.push(`| ${r.bench} | ${f.what} | ${fmt(f.value)} ${f.unit} | ${f.aim === undefined ? '' : `${f.higherIsBetter ? '>=' : '<='} ${fmt(f.aim)} ${f.unit}`} | ${ratio === undefined ? '' : `${fmt(ratio)}x${ratio <= 1 ? ' (met)' : ' (not met)'}`} | ${vs} |`);
    }
  }
  return `Benchmarks of ${when} (node ${process.version}, ${process.arch}); ratio = value / aim (<= 1 meets the aim).\n\n${rows.join('\n')}\n`;
}

function main(): number {
  const smoke = process.argv.includes('--smoke');
  const only = arg('--only')?.split(',');
  const here = import.meta.dirname;
  const tmp = mkdtempSync(path.join(tmpdir(), 'ns8ctl-bench-all-'));
  const results: BenchResult[] = [];
  const failed: string[] = [];
  try {
    for (const b of BENCHES) {
      if (only && !only.includes(b.name)) continue;
      if (b.root && process.getuid?.() !== 0) {
        console.log(`\n== ${b.name}: skipped (needs root)`);
        continue;
      }
      const out = path.join(tmp, `${b.name}.json`);
      console.log(`\n== ${b.name}${smoke ? ' (smoke)' : ''}`);
      const t0 = Date.now();
      const r = spawnSync(process.execPath, [path.join(here, b.script), ...(b.args ?? [])], {
        stdio: 'inherit',
        env: { ...process.env, ...(smoke ? b.smoke : b.full), BENCH_RESULT_FILE: out, ...(smoke ? { BENCH_SMOKE: '1' } : {}) },
        timeout: (smoke ? 10 : 60) * 60_000,
      });
      if (r.status !== 0 || !existsSync(out)) {
        failed.push(`${b.name} (${r.status === null ? `killed: ${r.signal}` : `exit ${r.status}`}${existsSync(out) ? '' : ', no result'})`);
        continue;
      }
      results.push(JSON.parse(readFileSync(out, 'utf8')) as BenchResult);
      console.log(`== ${b.name}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  const md = renderMarkdown(results, new Date().toISOString().slice(0, 10));
  if (!smoke) {
    const dir = path.resolve(here, '../../bench');
    writeFileSync(path.join(dir, 'results.json'), JSON.stringify({ date: new Date().toISOString(), node: process.version, results }, null, 1) + '\n');
    writeFileSync(path.join(dir, 'results.md'), md);
  }
  console.log(`\n${md}`);
  console.log(`benchmarks: ${results.length} ran, ${failed.length} failed${failed.length ? `: ${failed.join('; ')}` : ''}`);
  return failed.length ? 1 : 0;
}

process.exitCode = main();
