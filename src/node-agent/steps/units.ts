import { promises as fs } from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { Ns8ctlError, toNs8ctlError } from '../../errors.js';
import { writeFileAtomic } from '../atomic-write.js';
import type { UnitScope } from '../host/systemd.js';
import type { Step } from '../types.js';
import { requireScope, purposeOf, settleUnits, type StepContext, type StepHandlers } from './context.js';

/** systemd units: files, reloads, enable/start/restart/stop, and the stamps they run with. */
export const unitsSteps: StepHandlers<'install-system-units' | 'install-agent-unit' | 'daemon-reload' | 'enable-units' | 'disable-units' | 'start-units' | 'restart-units' | 'stop-units' | 'record-units'> = {
  'install-system-units': async (step, ctx) => {
    const { deps, id } = ctx;
    const installed: Record<string, string> = { ...((await deps.records.get(id))?.systemUnits ?? {}) };
    for (const u of step.units) {
      const text = await fs.readFile(u.source, 'utf8');
      await writeFileAtomic(path.join(deps.layout.systemUnitDir, u.name), text, { mode: 0o644, uid: 0, gid: 0 });
      installed[u.name] = createHash('sha256').update(text).digest('hex');
    }
    // A template file (x@.service) may serve other instances too: keep it while one records it.
    const others = [...(await deps.records.list()).values()].filter((r) => r.id !== id);
    for (const name of step.remove) {
      if (!others.some((r) => r.systemUnits?.[name] !== undefined)) await fs.rm(path.join(deps.layout.systemUnitDir, name), { force: true });
      delete installed[name];
    }
    await deps.records.update(id, { systemUnits: installed });
  },
  'install-agent-unit': async (step, _ctx) => {
    await fs.mkdir(path.dirname(step.path), { recursive: true });
    await writeFileAtomic(step.path, step.content, { mode: 0o644, uid: 0, gid: 0 });
  },
  'daemon-reload': async (step, ctx) => {
    const { deps } = ctx;
    const purpose = purposeOf(step);
    await deps.systemd.daemonReload(await requireScope(ctx, 'daemon-reload'), purpose);
  },
  'enable-units': async (step, ctx) => {
    const { deps } = ctx;
    const purpose = purposeOf(step);
    await deps.systemd.enable(await requireScope(ctx, 'enabling units'), step.units, purpose);
  },
  'disable-units': async (step, ctx) => {
    const { deps } = ctx;
    const purpose = purposeOf(step);
    await deps.systemd.disable(await requireScope(ctx, 'disabling units'), step.units, purpose);
  },
  'start-units': async (step, ctx) => {
    const { deps } = ctx;
    const purpose = purposeOf(step);
    const scope = await requireScope(ctx, 'starting units');
    await deps.systemd.start(scope, step.units, purpose);
    await verifyActive(ctx, step, scope, step.units, purpose);
  },
  'restart-units': async (step, ctx) => {
    const { deps } = ctx;
    const purpose = purposeOf(step);
    const scope = await requireScope(ctx, 'restarting units');
    await deps.systemd.restart(scope, step.units, purpose);
    await verifyActive(ctx, step, scope, step.units, purpose);
  },
  'stop-units': async (step, ctx) => {
    const { deps } = ctx;
    const purpose = purposeOf(step);
    await deps.systemd.stop(await requireScope(ctx, 'stopping units'), step.units, purpose);
  },
  'record-units': async (step, ctx) => {
    const { deps, id } = ctx;
    await deps.records.update(id, { units: step.units });
  },
};

/** Checks between the looks at a started unit, and how many looks make its stability window. */
const SETTLE_POLL_MS = 300;
const SETTLE_LOOKS = 6;

/**
 * A Type=simple unit reports active at once and may fail a moment later: it must stay active
 * for about 1.5 s (then a unit restarting on failure shows as activating or failed). The first
 * look is awaited here (a unit that failed at once fails the step); the rest of the window is
 * awaited here too, or left in `ctx.settling` when the caller lets units settle in the background.
 */
async function verifyActive(ctx: StepContext, step: Step, scope: UnitScope, units: string[], purpose: string): Promise<void> {
  await settleUnits(ctx); // an earlier start's window is over before this one starts
  const first = await ctx.deps.systemd.isActive(scope, units, `${purpose} (check)`);
  if (units.some((u) => first[u] === 'failed')) throw await unitFailure(ctx, scope, units, first, purpose);
  const rest = watchActive(ctx, scope, units, purpose).then(
    () => undefined,
    (err: unknown) => toNs8ctlError(err),
  );
  if (!ctx.settleInBackground) {
    const err = await rest;
    if (err) throw err;
    return;
  }
  ctx.settling = { step, done: rest };
}

/** The rest of the window: every unit active at each look, the last one `SETTLE_LOOKS` polls after the start. */
async function watchActive(ctx: StepContext, scope: UnitScope, units: string[], purpose: string): Promise<void> {
  let states: Record<string, string> = {};
  let looked = 0; // how long the last look took: the looks stay SETTLE_POLL_MS apart, not further
  for (let i = 1; i < SETTLE_LOOKS * 2; i++) {
    await ctx.deps.delay(Math.max(0, SETTLE_POLL_MS - looked));
    const t = Date.now();
    states = await ctx.deps.systemd.isActive(scope, units, `${purpose} (check)`);
    looked = Date.now() - t;
    if (units.every((u) => states[u] === 'active') && i >= SETTLE_LOOKS - 1) return;
    if (units.some((u) => states[u] === 'failed')) break;
  }
  throw await unitFailure(ctx, scope, units, states, purpose);
}

async function unitFailure(ctx: StepContext, scope: UnitScope, units: string[], states: Record<string, string>, purpose: string): Promise<Ns8ctlError> {
  const bad = units.filter((u) => states[u] !== 'active');
  const why = await Promise.all(bad.map((u) => ctx.deps.systemd.describe(scope, u, `${purpose} (describe)`)));
  return new Ns8ctlError('unit_failed', `${ctx.id}: unit ${bad.join(', ')} did not start: ${why.join('; ')}`, { user: false });
}
