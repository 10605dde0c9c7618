import { applyPlan, checkApplicable, hasWrites, preparePlan, type PreparedPlan } from '../../apply/pipeline.js';
import { RefusedError } from '../../errors.js';
import { isEmpty } from '../../plan/planner.js';
import { renderPlanJson, renderPlanText } from '../../plan/render.js';
import type { Plan } from '../../plan/types.js';
import { readCoreVersion } from '../../repository/core-version.js';
import type { CliDeps } from '../deps.js';
import { parseOutput, renderJson, useColor } from '../output.js';

export interface DiffOptions {
  filename: string[];
  prune?: boolean;
  applyset?: string;
  output?: string;
}

export interface ApplyOptions extends DiffOptions {
  forcePrune?: boolean;
  dryRun?: boolean;
}

function printPlan(plan: Plan, format: string, deps: CliDeps, extra: Record<string, unknown> = {}): void {
  if (format === 'json') deps.stdout(renderJson({ ...(renderPlanJson(plan) as Record<string, unknown>), ...extra }));
  else deps.stdout(renderPlanText(plan, { color: useColor(deps.isTTY, deps.env) }));
}

/** Observe-stage problems that did not stop planning (unreadable repositories), on stderr. */
function printWarnings(prepared: PreparedPlan, deps: CliDeps): void {
  for (const w of prepared.warnings ?? []) deps.stderr(`warning: ${w}\n`);
}

/**
 * `ns8ctl diff -f PATH`: the plan without writing. Exit 0 when there is nothing to change, 1 when
 * there are changes or blocked objects (like `kubectl diff`); pending version updates alone do
 * not count (the node agent makes them). Errors exit above 1.
 */
export async function diffCommand(opts: DiffOptions, deps: CliDeps): Promise<number> {
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  const { redis } = await deps.connect();
  const coreVersion = await readCoreVersion({ env: deps.env });
  const prepared = await preparePlan(opts.filename, redis, { applySet: opts.applyset ?? 'default', prune: Boolean(opts.prune), coreVersion, stdin: deps.stdin });
  printWarnings(prepared, deps);
  const { plan } = prepared;
  printPlan(plan, format, deps);
  return isEmpty(plan) ? 0 : 1;
}

/**
 * `ns8ctl apply -f PATH [--prune] [--force-prune] [--dry-run]`: plan, print it, write it
 * atomically (with the new source of unchanged objects whose manifest moved: `sourcesUpdated`).
 * Invalid manifests write nothing. `--dry-run` prints the plan and runs the checks
 * the real apply makes before writing (checkApplicable: prune safety, blocked changes) without
 * writing: exit 1 when the real apply would be refused (text: the error on stderr; json: `refused:
 * {error, message}` in the plan document, else `refused: null`), 0 otherwise.
 */
export async function applyCommand(opts: ApplyOptions, deps: CliDeps): Promise<number> {
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  const applySet = opts.applyset ?? 'default';
  const prune = Boolean(opts.prune);
  const { redis } = await deps.connect();
  const coreVersion = await readCoreVersion({ env: deps.env });
  const prepared = await preparePlan(opts.filename, redis, { applySet, prune, coreVersion, stdin: deps.stdin });
  printWarnings(prepared, deps);
  if (opts.dryRun) {
    let refusal: RefusedError | undefined;
    try {
      checkApplicable(prepared.plan, { forcePrune: Boolean(opts.forcePrune) });
    } catch (err) {
      if (!(err instanceof RefusedError)) throw err;
      refusal = err;
    }
    printPlan(prepared.plan, format, deps, { dryRun: true, refused: refusal ? refusal.toJSON() : null });
    if (format !== 'json') {
      if (refusal) deps.stderr(`error: ${refusal.message}\n`);
      deps.stderr(refusal ? 'Dry run: nothing was written; the real apply would be refused (see above).\n' : 'Dry run: nothing was written.\n');
    }
    return refusal ? 1 : 0;
  }
  if (isEmpty(prepared.plan) && !hasWrites(prepared)) {
    printPlan(prepared.plan, format, deps, { applied: false, sourcesUpdated: [] });
    return 0;
  }
  const result = await applyPlan(prepared, redis, { applySet, prune, coreVersion, forcePrune: Boolean(opts.forcePrune), runner: deps.runner });
  const changed = result.plan.changes.length > 0;
  printPlan(result.plan, format, deps, { applied: changed, attempts: result.attempts, sourcesUpdated: result.sourcesUpdated });
  if (format !== 'json') {
    const n = result.sourcesUpdated.length;
    if (n > 0) deps.stderr(`Recorded the new source file of ${n} unchanged object${n === 1 ? '' : 's'} (generation unchanged): ${result.sourcesUpdated.slice(0, 5).join(', ')}${n > 5 ? `, and ${n - 5} more` : ''}.\n`);
    if (changed) deps.stderr(`Applied${result.attempts > 1 ? ` (after ${result.attempts - 1} retr${result.attempts === 2 ? 'y' : 'ies'} on concurrent changes)` : ''}.\n`);
  }
  return 0;
}
