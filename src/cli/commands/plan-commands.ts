import { applyPlan, checkApplicable, hasWrites, preparePlan, revisionsOf, type PreparedPlan } from '../../apply/pipeline.js';
import { makeRevisionLookup } from '../../apply/git-revision.js';
import { resolveStateDir } from '../../state/state-dir.js';
import { RefusedError, UsageError } from '../../errors.js';
import { isEmpty } from '../../plan/planner.js';
import { renderPlanJson, renderPlanText } from '../../plan/render.js';
import type { Plan } from '../../plan/types.js';
import { readCoreVersion } from '../../repository/core-version.js';
import type { CliDeps } from '../deps.js';
import { parseOutput, renderJson, useColor } from '../../runtime/output.js';

export interface DiffOptions {
  filename: string[];
  prune?: boolean;
  applyset?: string;
  output?: string;
  /** Save the plan to this file (apply --plan). */
  out?: string;
  /** With `out`: the saved plan may prune more than half of the apply set. */
  forcePrune?: boolean;
  /** With prune: manifests without objects are valid (everything of the apply set is pruned). */
  allowEmpty?: boolean;
}

export interface ApplyOptions extends Omit<DiffOptions, 'filename' | 'out'> {
  filename?: string[];
  dryRun?: boolean;
  /** A plan saved by `diff --out`. */
  plan?: string;
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
  if (opts.forcePrune && !opts.out) throw new UsageError('diff --force-prune is for a saved plan (--out FILE); ns8ctl apply takes --force-prune itself');
  const { redis } = await deps.connect({ lite: true });
  const coreVersion = await readCoreVersion({ env: deps.env });
  const prepared = await preparePlan(opts.filename, redis, { applySet: opts.applyset ?? 'default', prune: Boolean(opts.prune), coreVersion, stdin: deps.stdin, allowEmpty: Boolean(opts.allowEmpty) });
  printWarnings(prepared, deps);
  const { plan } = prepared;
  if (opts.out) {
    // A plan apply would refuse is not saved (the reason is the error).
    checkApplicable(plan, { forcePrune: Boolean(opts.forcePrune) });
    // Saved plans (encryption, their own validation) load only for --out and --plan.
    const { loadPlanKey, makeSavedPlan, writeSavedPlan } = await import('../../apply/saved-plan.js');
    const key = await loadPlanKey(deps.stateDir ?? resolveStateDir(undefined, deps.env), true);
    const saved = makeSavedPlan(prepared, {
      key,
      applySet: opts.applyset ?? 'default',
      prune: Boolean(opts.prune),
      forcePrune: Boolean(opts.forcePrune),
      revisionOf: await revisionsOf(prepared, makeRevisionLookup(deps.runner)),
      now: new Date(),
      render: (p) => ({ text: renderPlanText(p, { color: false }), json: renderPlanJson(p) as Record<string, unknown> }),
    });
    await writeSavedPlan(opts.out, saved);
    printPlan(plan, format, deps, { savedTo: opts.out });
    if (format !== 'json') deps.stderr(`Saved the plan to ${opts.out} (its desired objects are encrypted with this host's plan key; keep it private all the same). Apply exactly this plan with: ns8ctl apply --plan ${opts.out}
`);
    return isEmpty(plan) ? 0 : 1;
  }
  printPlan(plan, format, deps);
  return isEmpty(plan) ? 0 : 1;
}

/**
 * `ns8ctl apply --plan FILE`: re-makes the saved plan from its reviewed desired objects (same
 * validation and planner, same changes or refused) and writes it atomically, or nothing. Prints
 * the plan that ran. Exit 0 when applied, 3 when desired state changed since the plan was made
 * (stale: make a new one).
 */
async function applySavedPlanCommand(opts: ApplyOptions & { plan: string }, deps: CliDeps): Promise<number> {
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  if (opts.filename?.length || opts.prune || opts.forcePrune || opts.allowEmpty || opts.dryRun || (opts.applyset && opts.applyset !== 'default')) {
    throw new UsageError('apply --plan FILE applies the saved plan as it is: -f, --prune, --force-prune, --allow-empty, --applyset and --dry-run belong to the diff --out that made it');
  }
  const { applySavedPlan, loadPlanKey, readSavedPlan } = await import('../../apply/saved-plan.js');
  const saved = await readSavedPlan(opts.plan);
  const key = await loadPlanKey(deps.stateDir ?? resolveStateDir(undefined, deps.env), false);
  const { redis } = await deps.connect();
  const coreVersion = await readCoreVersion({ env: deps.env });
  const result = await applySavedPlan(saved, redis, { key, file: opts.plan, coreVersion });
  if (format === 'json') deps.stdout(renderJson({ ...(renderPlanJson(result.plan) as Record<string, unknown>), applied: saved.changes > 0, savedPlan: opts.plan, createdAt: saved.createdAt, sourcesUpdated: result.sourcesUpdated }));
  else {
    deps.stdout(renderPlanText(result.plan, { color: useColor(deps.isTTY, deps.env) }));
    deps.stderr(saved.changes > 0 ? `Applied the saved plan ${opts.plan} (made ${saved.createdAt}).\n` : `The saved plan ${opts.plan} has no changes, and desired state still matches it.\n`);
  }
  return 0;
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
  if (opts.plan !== undefined) return applySavedPlanCommand({ ...opts, plan: opts.plan }, deps);
  if (!opts.filename?.length) throw new UsageError("apply needs the manifests (-f PATH) or a saved plan (--plan FILE); see ns8ctl apply --help");
  const filename = opts.filename;
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  const applySet = opts.applyset ?? 'default';
  const prune = Boolean(opts.prune);
  const { redis } = await deps.connect();
  const coreVersion = await readCoreVersion({ env: deps.env });
  const prepared = await preparePlan(filename, redis, { applySet, prune, coreVersion, stdin: deps.stdin, allowEmpty: Boolean(opts.allowEmpty) });
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
