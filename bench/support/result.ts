/**
 * The figures a benchmark reports, as data: each bench prints its own human table and, when
 * `BENCH_RESULT_FILE` is set (by bench/all.ts), also writes them as JSON there so `npm run
 * bench:all` can gather one results.json and one markdown table.
 */
import { writeFileSync } from 'node:fs';

/** One measured figure. `aim` is the target in the same unit; `ratio` = value / aim when both exist. */
export interface Figure {
  what: string;
  value: number;
  unit: string;
  /** Target (lower is better unless `higherIsBetter`). */
  aim?: number;
  higherIsBetter?: boolean;
  /** Another measurement on the same machine it is compared with (a floor or a peer). */
  versus?: { what: string; value: number };
}

/** What one benchmark run produced. */
export interface BenchResult {
  bench: string;
  /** Sizes it ran with (instances, changes, ...). */
  sizes: Record<string, number>;
  figures: Figure[];
}

/** Writes `result` to $BENCH_RESULT_FILE when the runner asked for it; otherwise does nothing. */
export function emitResult(result: BenchResult): void {
  const file = process.env.BENCH_RESULT_FILE;
  if (file) writeFileSync(file, JSON.stringify(result, null, 1) + '\n');
}

/** value / aim (or aim / value when higher is better), when an aim is set. */
export function ratioOf(f: Figure): number | undefined {
  if (f.aim === undefined || f.aim === 0 || f.value === 0) return undefined;
  return f.higherIsBetter ? f.aim / f.value : f.value / f.aim;
}
