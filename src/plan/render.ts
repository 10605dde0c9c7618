/**
 * Renders a plan for people (Terraform-like text) and for programs (one JSON document). Secrets
 * are masked in both, in every place a value can appear. docs/plan.md shows both forms.
 */
import type { Operation } from 'fast-json-patch';
import { API_VERSION } from '../manifest/types.js';
import { canonicalize, jsonEqual } from '../runtime/canonical.js';
import { MASK, isSecretKey, isSecretPath, maskSecrets, maskString } from '../runtime/mask.js';
import { isEmpty } from './planner.js';
import type { BookkeepingWrite, Change, Plan, ResolvedImage, UpdateNotice } from './types.js';

/** Options of `renderPlanText`. */
export interface RenderTextOptions {
  /** ANSI colours; the caller decides (terminal, NO_COLOR). */
  color: boolean;
}

const ANSI = { red: 31, green: 32, yellow: 33, magenta: 35, cyan: 36, grey: 90, bold: 1 } as const;
type Style = keyof typeof ANSI;

const INDENT = '    ';

/**
 * The plan as text, newline-terminated:
 * ```
 * + Module/dokuwiki1 (create)
 *     # new object
 *     + spec.module: "dokuwiki"
 * ~ Module/webapp1 (update)
 *     # spec.version changed
 *     ~ spec.version: "1.0.0" -> "1.1.0"
 * - Module/old1 (delete, data preserved)
 *
 * Plan: 1 to create, 1 to update, 1 to delete.
 * ```
 * Module changes with a resolution carry `# resolves to IMAGE (repository NAME)`. Version updates
 * the node agent will make are `↑ Module/x update 1.0.0 -> 1.1.0` lines (`↓` for a downgrade,
 * `(refused)` plus the reason when the agent will refuse it). Blocked objects are `!` lines;
 * warnings are `? ` lines; without prune, inventory members that left the manifests are listed
 * in a note. Values under secret-looking keys print as `(sensitive value)`.
 */
export function renderPlanText(plan: Plan, opts: RenderTextOptions): string {
  const paint = (style: Style, s: string): string => (opts.color ? `\u001b[${ANSI[style]}m${s}\u001b[0m` : s);
  const out: string[] = [];
  for (const c of plan.changes) {
    out.push(...renderChange(c, paint), '');
  }
  for (const u of plan.updates ?? []) {
    out.push(...renderUpdate(u, paint), '');
  }
  for (const b of plan.blocked) {
    out.push(paint('magenta', `! ${b.key} (blocked${b.code ? `: ${b.code}` : ''})`), paint('grey', `${INDENT}# ${maskString(b.message)}`), '');
  }
  for (const w of plan.warnings ?? []) {
    out.push(paint('yellow', `? ${maskString(w)}`), '');
  }
  if (!plan.prune && plan.pruneCandidates.length) {
    const n = plan.pruneCandidates.length;
    out.push(
      `${n} object${n === 1 ? '' : 's'} of apply set ${JSON.stringify(plan.applySet)} ${n === 1 ? 'is' : 'are'} no longer in the manifests and ${n === 1 ? 'is' : 'are'} kept (--prune deletes ${n === 1 ? 'it' : 'them'}): ${plan.pruneCandidates.join(', ')}`,
      '',
    );
  }
  out.push(paint('bold', summaryLine(plan)));
  return out.join('\n') + '\n';
}

/**
 * The last line of the text form: `Plan: 1 to create, 0 to update, 0 to delete.`, or
 * `No changes. Desired state matches.`, followed by the blocked count and, when there are any,
 * `N version update(s) pending.` / `N version update(s) refused (see above).`
 */
export function summaryLine(plan: Plan): string {
  const blocked = plan.blocked.length;
  const blockedText = `${blocked} blocked (see "!" above)`;
  const updates = plan.updates ?? [];
  const pending = updates.filter((u) => !u.refused).length;
  const refused = updates.length - pending;
  const updatesText =
    (pending ? ` ${pending} version update${pending === 1 ? '' : 's'} pending.` : '') + (refused ? ` ${refused} version update${refused === 1 ? '' : 's'} refused (see above).` : '');
  if (plan.changes.length === 0) {
    return (blocked ? `No changes planned; ${blockedText}.` : 'No changes. Desired state matches.') + updatesText;
  }
  const { create, update, delete: del } = plan.summary;
  return `Plan: ${create} to create, ${update} to update, ${del} to delete.` + (blocked ? ` ${blockedText}.` : '') + updatesText;
}

/** `ghcr.io/x/webapp:1.1.0 (repository default)`, `... (repository testing, prerelease)`, `... (full image URL)`. */
export function describeResolved(r: ResolvedImage): string {
  if (r.repository === null) return `${r.image} (full image URL)`;
  return `${r.image} (repository ${r.repository}${r.prerelease ? ', prerelease' : ''})`;
}

function renderUpdate(u: UpdateNotice, paint: (style: Style, s: string) => string): string[] {
  const arrow = u.kind === 'downgrade' ? '↓' : '↑';
  const word = u.kind === 'downgrade' ? 'downgrade' : 'update';
  const head = `${arrow} ${u.key} ${word} ${u.from} -> ${u.to}${u.refused ? ' (refused)' : ''}`;
  const lines = [paint(u.refused ? 'magenta' : 'cyan', head), paint('grey', `${INDENT}# resolves to ${maskString(describeResolved(u.resolved))}`)];
  if (u.refused) lines.push(paint('grey', `${INDENT}# ${maskString(u.refused.message)}`));
  else lines.push(paint('grey', `${INDENT}# running ${maskString(u.fromImage)}; the node agent performs the update`));
  return lines;
}

function renderChange(c: Change, paint: (style: Style, s: string) => string): string[] {
  const lines: string[] = [];
  const names = secretNamesOf(c);
  if (c.action === 'create') lines.push(paint('green', `+ ${c.key} (create)`));
  else if (c.action === 'update') lines.push(paint('yellow', `~ ${c.key} (update)`));
  else if (c.dataPolicy === 'deleted') lines.push(paint('red', `- ${c.key} (delete, `) + paint('bold', paint('red', 'DATA DELETED')) + paint('red', ')'));
  else lines.push(paint('red', `- ${c.key} (delete${c.dataPolicy === 'preserved' ? ', data preserved' : ''})`));
  for (const r of c.reasons) lines.push(paint('grey', `${INDENT}# ${maskString(r)}`));
  if (c.resolved) lines.push(paint('grey', `${INDENT}# resolves to ${maskString(describeResolved(c.resolved))}`));
  if (c.resolutionError) lines.push(paint('grey', `${INDENT}# image not resolved: ${maskString(c.resolutionError.message)}`));
  const body: DiffLine[] = [];
  if (c.action === 'create' && c.after) addedLines(c.after.spec, ['spec'], body, names);
  if (c.action === 'update' && c.before && c.after) {
    diffLines(c.before.metadata, c.after.metadata, ['metadata'], body, names);
    diffLines(c.before.spec, c.after.spec, ['spec'], body, names);
  }
  const style: Record<DiffLine['op'], Style> = { '+': 'green', '~': 'yellow', '-': 'red' };
  for (const l of body) lines.push(paint(style[l.op], `${INDENT}${l.op} ${l.text}`));
  return lines;
}

interface DiffLine {
  op: '+' | '~' | '-';
  text: string;
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_-]*$/;

/** `spec.volumes.data`, `metadata.labels["app.kubernetes.io/name"]`. */
function formatPath(path: readonly string[]): string {
  return path.map((seg, i) => (i === 0 ? seg : IDENT.test(seg) ? `.${seg}` : `[${JSON.stringify(seg)}]`)).join('');
}

/** The schema-marked secret names of a change (Change.secretNames), or undefined when none. */
function secretNamesOf(c: Change): ReadonlySet<string> | undefined {
  return c.secretNames?.length ? new Set(c.secretNames) : undefined;
}

/** True when a value at `path` is secret: by the name rule, or a key on it is schema-marked. */
function isSecretAt(path: readonly string[], names: ReadonlySet<string> | undefined): boolean {
  return isSecretPath(path) || (names !== undefined && path.some((k) => names.has(k)));
}

function formatValue(path: readonly string[], value: unknown, names: ReadonlySet<string> | undefined): string {
  if (isSecretAt(path, names)) return MASK;
  return JSON.stringify(maskSecrets(canonicalize(value), names ? { secretNames: names } : {})) ?? 'null';
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** One `+` line per leaf of `value` (objects are walked, arrays and scalars printed inline). */
function addedLines(value: unknown, path: string[], out: DiffLine[], names?: ReadonlySet<string>): void {
  if (isPlainObject(value) && Object.keys(value).length > 0 && !isSecretAt(path, names)) {
    for (const k of Object.keys(value).sort()) {
      if (value[k] !== undefined) addedLines(value[k], [...path, k], out, names);
    }
    return;
  }
  out.push({ op: '+', text: `${formatPath(path)}: ${formatValue(path, value, names)}` });
}

/** Field-level diff: `~ path: old -> new`, `+ path: value`, `- path`. */
function diffLines(before: unknown, after: unknown, path: string[], out: DiffLine[], names?: ReadonlySet<string>): void {
  if (jsonEqual(before, after)) return;
  if (before === undefined) {
    addedLines(after, path, out, names);
    return;
  }
  if (after === undefined) {
    out.push({ op: '-', text: formatPath(path) });
    return;
  }
  if (isPlainObject(before) && isPlainObject(after) && !isSecretAt(path, names)) {
    for (const k of [...new Set([...Object.keys(before), ...Object.keys(after)])].sort()) {
      diffLines(before[k], after[k], [...path, k], out, names);
    }
    return;
  }
  out.push({ op: '~', text: `${formatPath(path)}: ${formatValue(path, before, names)} -> ${formatValue(path, after, names)}` });
}

/** JSON Pointer segments of a patch path (`/configuration/a~1b` -> [configuration, a/b]). */
function pointerSegments(pointer: string): string[] {
  return pointer
    .split('/')
    .slice(1)
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/**
 * A patch with secret values masked: a whole value under a secret path, secret keys inside values;
 * `secretNames` (a schema's marks, Change.secretNames) count as secret keys too.
 */
export function maskPatch(patch: readonly Operation[], secretNames?: ReadonlySet<string>): Operation[] {
  return patch.map((op) => {
    if (!('value' in op)) return { ...op };
    const value: unknown = isSecretAt(pointerSegments(op.path), secretNames) ? MASK : maskSecrets(op.value, secretNames ? { secretNames } : {});
    return { ...op, value } as Operation;
  });
}

function maskBookkeeping(w: BookkeepingWrite): BookkeepingWrite {
  switch (w.type) {
    case 'hset':
      return { ...w, value: isSecretKey(w.field) ? MASK : maskString(w.value) };
    case 'set':
      return { ...w, value: maskString(w.value) };
    default:
      return { ...w };
  }
}

function resolvedJson(r: ResolvedImage): Record<string, unknown> {
  return { image: maskString(r.image), tag: r.tag, version: r.version, repository: r.repository, prerelease: r.prerelease };
}

/**
 * The plan as one JSON document (the `-o json` contract, documented in docs/plan.md). Field names
 * are stable; absent values are `null`, never missing. Secrets are masked in reasons, patch,
 * before/after and bookkeeping values.
 */
export function renderPlanJson(plan: Plan): Record<string, unknown> {
  return {
    apiVersion: API_VERSION,
    kind: 'Plan',
    applySet: plan.applySet,
    prune: plan.prune,
    empty: isEmpty(plan),
    summary: {
      ...plan.summary,
      blocked: plan.blocked.length,
      updates: (plan.updates ?? []).filter((u) => !u.refused).length,
      updatesRefused: (plan.updates ?? []).filter((u) => u.refused).length,
    },
    pruneRatio: { ...plan.pruneRatio },
    pruneCandidates: [...plan.pruneCandidates],
    changes: plan.changes.map((c) => maskedChangeJson(c)),
    blocked: plan.blocked.map((b) => ({ key: b.key, ...(b.code ? { code: b.code } : {}), message: maskString(b.message) })),
    updates: (plan.updates ?? []).map((u) => ({
      key: u.key,
      id: u.id,
      kind: u.kind,
      from: u.from,
      fromImage: maskString(u.fromImage),
      to: u.to,
      resolved: resolvedJson(u.resolved),
      refused: u.refused ? { code: u.refused.code, message: maskString(u.refused.message) } : null,
    })),
    warnings: (plan.warnings ?? []).map(maskString),
  };
}

/** One change of the JSON form, its values masked by the name rule and the schema's marks. */
function maskedChangeJson(c: Change): Record<string, unknown> {
  const names = secretNamesOf(c);
  const opts = names ? { secretNames: names } : {};
  return {
    action: c.action,
    key: c.key,
    kind: c.kind,
    id: c.id,
    reasons: c.reasons.map(maskString),
    specChanged: c.specChanged,
    generation: c.generation ?? null,
    dataPolicy: c.dataPolicy ?? null,
    source: c.source ? { file: c.source.file, doc: c.source.doc, line: c.source.line, col: c.source.col } : null,
    patch: maskPatch(c.patch, names),
    before: c.before ? maskSecrets(c.before, opts) : null,
    after: c.after ? maskSecrets(c.after, opts) : null,
    bookkeeping: c.bookkeeping.map(maskBookkeeping),
    inventory: { add: c.inventory.add, remove: [...c.inventory.remove] },
    resolved: c.resolved ? resolvedJson(c.resolved) : null,
    resolutionError: c.resolutionError ? { code: c.resolutionError.code, message: maskString(c.resolutionError.message) } : null,
  };
}
