/**
 * CLI startup against the floor of the platform: `node -e 0` (a process that loads nothing),
 * then `ns8ctl --help`, `ns8ctl diff --help` and `ns8ctl validate -f manifests/ --offline`, each a
 * new process, median of BENCH_REPEAT runs (default 7). Prints each time and its ratio to the
 * floor; aims: --help <= 1.5x, validate <= 2x.
 * Run: `npm run build && node dist/bench/cli-startup.js`.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { emitResult, type Figure } from './support/result.js';

const REPEAT = Math.max(1, Number(process.env.BENCH_REPEAT ?? 7));
const bin = path.resolve(import.meta.dirname, '../src/cli/bin.js');
const manifests = path.resolve(import.meta.dirname, '../../manifests');

function wall(argv: string[]): number {
  const t0 = performance.now();
  execFileSync(process.execPath, argv, { stdio: 'ignore', env: { ...process.env, NS8CTL_OFFLINE: '1' } });
  return performance.now() - t0;
}

function median(f: () => number): number {
  const xs = Array.from({ length: REPEAT }, f).sort((a, b) => a - b);
  return xs[Math.floor(xs.length / 2)]!;
}

const floor = median(() => wall(['-e', '0']));
const cases: { what: string; argv: string[]; aimRatio: number }[] = [
  { what: 'ns8ctl --help', argv: [bin, '--help'], aimRatio: 1.5 },
  { what: 'ns8ctl diff --help', argv: [bin, 'diff', '--help'], aimRatio: 1.5 },
  { what: 'ns8ctl validate -f manifests/ --offline', argv: [bin, 'validate', '-f', manifests, '--offline'], aimRatio: 2 },
];
const figures: Figure[] = [{ what: 'node -e 0 (floor)', value: floor, unit: 'ms' }];
console.log(`ns8ctl CLI startup, median of ${REPEAT}, node ${process.version}`);
console.log(`${'node -e 0 (floor)'.padEnd(42)} ${floor.toFixed(0).padStart(6)} ms`);
for (const c of cases) {
  const ms = median(() => wall(c.argv));
  figures.push({ what: c.what, value: ms, unit: 'ms', aim: floor * c.aimRatio, versus: { what: 'node -e 0', value: floor } });
  console.log(`${c.what.padEnd(42)} ${ms.toFixed(0).padStart(6)} ms  ${(ms / floor).toFixed(2)}x the floor (aim <= ${c.aimRatio}x)`);
}
emitResult({ bench: 'cli-startup', sizes: { repeat: REPEAT }, figures });
