import type { Redis } from 'ioredis';
import { findCondition, type Condition as ControllerCondition, type ObjectSummary } from '../../controller/conditions.js';
import { readSourceStatus, type SourceStatus } from '../../controller/source-status.js';
import { NotFoundError, RedisError, UsageError } from '../../errors.js';
import type { Kind, ManifestObject } from '../../manifest/types.js';
import { maskSecrets, maskString } from '../../runtime/mask.js';
import type { StoredObject } from '../../state/cluster-state.js';
import type { InstanceUpdates } from '../../repository/resolve.js';
import { describeUpdate } from '../../repository/update-text.js';
import { keys } from '../../state/keys.js';
import { readClusterState, readNodeRecords } from '../../state/read-state.js';
import type { CliDeps } from '../deps.js';
import { parseOutput, renderJson, renderTable, renderYaml } from '../../runtime/output.js';
import { scanNames } from '../../state/scan.js';
import { formatDuration } from '../../runtime/duration.js';
import { sortNatural } from '../../runtime/canonical.js';

/** Resource names `get` accepts, with their kind (kubectl-style singular/plural/short forms). */
const RESOURCES: Record<string, Kind> = {
  module: 'Module', modules: 'Module', mod: 'Module',
  repository: 'Repository', repositories: 'Repository', repo: 'Repository', repos: 'Repository',
  node: 'Node', nodes: 'Node',
  backupdestination: 'BackupDestination', backupdestinations: 'BackupDestination', bd: 'BackupDestination',
  backupschedule: 'BackupSchedule', backupschedules: 'BackupSchedule', bs: 'BackupSchedule',
};

export function resourceKind(name: string): Kind {
  const kind = RESOURCES[name.toLowerCase()];
  if (!kind) throw new UsageError(`unknown resource type "${name}"; allowed: modules, repositories, nodes, backupdestinations (bd), backupschedules (bs)`);
  return kind;
}

export interface GetOptions {
  output?: string;
  /** Print secret-looking values (spec.configuration passwords, URL passwords) as they are; default masked. */
  showSecrets?: boolean;
}

interface Condition { type: string; status: string; reason?: string; message?: string; lastTransitionTime?: string }

/** The observed status a node agent wrote for one module (`ns8ctl/status/module/<id>`), parsed. */
export type ModuleStatus = Record<string, unknown> & { conditions?: Condition[]; observedGeneration?: number; targetImage?: string };

function parseJson<T>(v: string | undefined, fallback: T): T {
  if (!v) return fallback;
  try {
    return JSON.parse(v) as T;
  } catch {
    return fallback;
  }
}

/**
 * The controller's summaries (`ns8ctl/conditions/module/<id>`: Ready, Reconciling, Stalled,
 * Drifted) of `ids`, one pipeline; modules without one (no controller ran) are left out.
 * @throws RedisError when Redis refuses the read.
 */
export async function readModuleSummaries(redis: Redis, ids: string[]): Promise<Map<string, ObjectSummary>> {
  const out = new Map<string, ObjectSummary>();
  if (ids.length === 0) return out;
  const p = redis.pipeline();
  ids.forEach((id) => p.hgetall(keys.objectConditions('Module', id)));
  const res = (await p.exec()) ?? [];
  ids.forEach((id, i) => {
    const [err, value] = res[i] ?? [null, {}];
    if (err) throw new RedisError('redis_command_failed', `reading the controller conditions of ${id}: ${err.message}`, { cause: err });
    const h = (value ?? {}) as Record<string, string>;
    if (!h.conditions) return;
    out.set(id, {
      conditions: parseJson<ControllerCondition[]>(h.conditions, []),
      generation: Number(h.generation ?? 0),
      observedGeneration: Number(h.observedGeneration ?? 0),
      lastAppliedRevision: h.lastAppliedRevision ?? '',
      source: h.source ?? '',
      suspended: h.suspended === 'true',
    });
  });
  return out;
}

/** A summary about the stored generation; an older one (the controller has not caught up) says nothing. */
function currentSummary(o: StoredObject, summary: ObjectSummary | undefined): ObjectSummary | undefined {
  return summary && summary.generation === o.generation ? summary : undefined;
}

async function readStatuses(redis: Redis, ids: string[]): Promise<Map<string, ModuleStatus>> {
  const out = new Map<string, ModuleStatus>();
  if (ids.length === 0) return out;
  const p = redis.pipeline();
  ids.forEach((id) => p.hgetall(keys.moduleStatus(id)));
  const res = (await p.exec()) ?? [];
  ids.forEach((id, i) => {
    const h = (res[i]?.[1] ?? {}) as Record<string, string>;
    if (Object.keys(h).length === 0) return;
    const status: ModuleStatus = {};
    for (const [k, v] of Object.entries(h)) {
      try {
        status[k] = JSON.parse(v);
      } catch {
        status[k] = v;
      }
    }
    out.set(id, status);
  });
  return out;
}

/** The last run of each schedule for each instance (NS8's `module/<id>/backup_status/<schedule>`), in one pipeline. */
async function readBackupStatuses(redis: Redis, ids: readonly string[], schedules: readonly string[]): Promise<Map<string, Record<string, Record<string, string>>>> {
  const out = new Map<string, Record<string, Record<string, string>>>();
  const pairs = ids.flatMap((id) => schedules.map((schedule) => ({ id, schedule })));
  if (!pairs.length) return out;
  const p = redis.pipeline();
  for (const { id, schedule } of pairs) p.hgetall(`module/${id}/backup_status/${schedule}`);
  const res = (await p.exec()) ?? [];
  pairs.forEach(({ id, schedule }, i) => {
    const h = (res[i]?.[1] ?? {}) as Record<string, string>;
    if (Object.keys(h).length) out.set(id, { ...(out.get(id) ?? {}), [schedule]: h });
  });
  return out;
}

/** status.backups of a module document: per schedule, the last run and the last success. */
function backupsDocument(runs: Record<string, Record<string, string>>): Record<string, unknown> {
  const num = (v: string | undefined): number | undefined => (v !== undefined && v !== '' && Number.isFinite(Number(v)) ? Number(v) : undefined);
  return Object.fromEntries(
    Object.entries(runs).map(([schedule, h]) => {
      const end = num(h.end);
      const ok = h.errors === '0';
      return [schedule, {
        destination: h.destination,
        lastRun: end !== undefined ? new Date(end * 1000).toISOString() : undefined,
        result: ok ? 'succeeded' : 'failed',
        ...(ok ? {} : { error: h.error_message }),
        ...(h.last_success ? { lastSuccess: h.last_success } : {}),
        ...(ok ? { snapshot: h.snapshot, snapshots: num(h.snapshots_count), sizeBytes: num(h.total_size), addedBytes: num(h.added_size), durationMs: num(h.duration_ms) } : {}),
      }];
    }),
  );
}

/** The wide table's LAST BACKUP: the most recent run of any schedule (`nightly 2h ago`, `nightly 5m ago FAILED`). */
function lastBackupCell(runs: Record<string, Record<string, string>> | undefined, now: number): string {
  const latest = Object.entries(runs ?? {}).sort(([, a], [, b]) => Number(b.end ?? 0) - Number(a.end ?? 0))[0];
  if (!latest) return '-';
  const [schedule, h] = latest;
  const age = Number.isFinite(Number(h.end)) ? `${formatDuration(Math.max(0, now - Number(h.end) * 1000))} ago` : '';
  return `${schedule} ${age}${h.errors === '0' ? '' : ' FAILED'}`.trim();
}

/**
 * Short status for tables. The first that holds: Terminating (removal requested); `Stalled
 * (<reason>)` (the controller says retrying cannot help: ConfigurationFailed, ImageLabelInvalid,
 * ...); `Degraded (<reason>)` (node agent); `Configuring` (the controller is applying
 * spec.configuration); Ready (node agent ready at this generation, and the controller, when it
 * reported on this generation, agrees); Progressing; Pending (no agent yet). Then `, Drifted` when
 * the controller reports drift, and `, Suspended` while suspended. `summary` is the controller's
 * (`readModuleSummaries`); one about an older generation is ignored.
 */
export function statusWord(o: StoredObject, s: ModuleStatus | undefined, summary?: ObjectSummary): string {
  if (o.deleting) return 'Terminating';
  const c = currentSummary(o, summary);
  const flags = `${findCondition(c?.conditions, 'Drifted')?.status === 'True' ? ', Drifted' : ''}${c?.suspended ? ', Suspended' : ''}`;
  const stalled = findCondition(c?.conditions, 'Stalled');
  if (stalled?.status === 'True') return `Stalled${stalled.reason ? ` (${stalled.reason})` : ''}${flags}`;
  const conds = s?.conditions ?? [];
  const on = (t: string): Condition | undefined => conds.find((x) => x.type === t && x.status === 'True');
  const degraded = on('Degraded');
  if (degraded) return `Degraded${degraded.reason ? ` (${degraded.reason})` : ''}${flags}`;
  const ready = findCondition(c?.conditions, 'Ready');
  if (ready?.status === 'False' && ready.reason === 'Configuring') return `Configuring${flags}`;
  if (on('Ready') && s?.observedGeneration === o.generation && (!ready || ready.status === 'True')) return `Ready${flags}`;
  if (on('Progressing') || (s && s.observedGeneration !== o.generation) || (ready && ready.status !== 'True' && on('Ready'))) return `Progressing${flags}`;
  return `Pending${flags}`;
}

/**
 * `status.conditions` of `get -o json|yaml`: the controller's Ready/Reconciling/Stalled/Drifted
 * (when it reported on this generation), then the node agent's conditions of other types
 * (Progressing, Degraded); the agent's alone without a current controller summary.
 */
function mergedConditions(o: StoredObject, agent: ModuleStatus | undefined, summary: ObjectSummary | undefined): Condition[] | undefined {
  const c = currentSummary(o, summary);
  const fromAgent = agent?.conditions;
  if (!c) return fromAgent;
  const types = new Set(c.conditions.map((x) => x.type as string));
  return [...c.conditions, ...(fromAgent ?? []).filter((x) => !types.has(x.type))];
}

/** Whether a BackupDestination has its password (`ns8ctl backup set-password`): never the value. */
type PasswordState = 'set' | 'missing';

/**
 * The password state of each destination in `names`: HEXISTS on its secret key, one pipeline.
 * The value is never read.
 * @throws RedisError when Redis refuses the read.
 */
async function readPasswordStates(redis: Redis, names: string[]): Promise<Map<string, PasswordState>> {
  const out = new Map<string, PasswordState>();
  if (names.length === 0) return out;
  const p = redis.pipeline();
  names.forEach((n) => p.hexists(keys.backupPassword(n), 'password'));
  const res = (await p.exec()) ?? [];
  names.forEach((n, i) => {
    const [err, value] = res[i] ?? [null, 0];
    if (err) throw new RedisError('redis_command_failed', `reading whether ${keys.backupPassword(n)} is set: ${err.message}`);
    out.set(n, value === 1 ? 'set' : 'missing');
  });
  return out;
}

/**
 * `status.conditions` of a BackupDestination: PasswordSet True/False. A condition, not a
 * `password` field: every key naming a password is masked wherever ns8ctl prints it.
 */
function passwordCondition(name: string, state: PasswordState): Condition {
  return state === 'set'
    ? { type: 'PasswordSet', status: 'True', reason: 'PasswordStored', message: `stored in ${keys.backupPassword(name)}` }
    : { type: 'PasswordSet', status: 'False', reason: 'PasswordMissing', message: `no password: set it with ns8ctl backup set-password ${name}` };
}

/**
 * The table of BackupDestinations (NAME, URL masked by `text`, PASSWORD set/missing, GEN; wide:
 * SOURCE) or BackupSchedules (NAME, DESTINATION, SCHEDULE, INSTANCES, GEN; wide: RETENTION,
 * SUSPENDED, SOURCE); `objects` are all of one of the two kinds.
 */
function backupTable(objects: StoredObject[], passwords: Map<string, PasswordState>, wide: boolean, text: (v: string) => string): { columns: string[]; rows: string[][] } {
  const rows: string[][] = [];
  for (const o of objects) {
    const obj = o.object;
    if (obj.kind === 'BackupDestination') {
      rows.push([obj.metadata.name, text(obj.spec.url), passwords.get(obj.metadata.name) ?? 'missing', String(o.generation), ...(wide ? [o.source] : [])]);
    } else if (obj.kind === 'BackupSchedule') {
      const retention = Object.entries(obj.spec.retention ?? {}).map(([k, v]) => `${k} ${String(v)}`).join(', ');
      rows.push([obj.metadata.name, obj.spec.destination, obj.spec.schedule, scheduleTargets(obj.spec), String(o.generation), ...(wide ? [retention, String(obj.spec.suspend ?? false), o.source] : [])]);
    }
  }
  const destinations = objects[0]?.object.kind === 'BackupDestination';
  const columns = destinations ? ['name', 'url', 'password', 'gen', ...(wide ? ['source'] : [])] : ['name', 'destination', 'schedule', 'instances', 'gen', ...(wide ? ['retention', 'suspended', 'source'] : [])];
  return { columns, rows };
}

/** INSTANCES column of a BackupSchedule: the listed ids, then the selector (`webapp1,webapp2 + backup=nightly`). */
function scheduleTargets(spec: { instances?: string[]; selector?: { matchLabels: Record<string, string> } }): string {
  const ids = (spec.instances ?? []).join(',');
  const labels = Object.entries(spec.selector?.matchLabels ?? {}).map(([k, v]) => `${k}=${v}`).join(',');
  return [ids, labels && `labels ${labels}`].filter(Boolean).join(' + ');
}

/** Rows for nodes NS8 has records of (`node/<id>/vpn`) but no Node object declares. */
async function nodeRecordRows(redis: Redis, objects: StoredObject[], name: string | undefined, wide: boolean): Promise<string[][]> {
  const declared = new Set(objects.map((o) => o.key.slice('Node/'.length)));
  const ids = (await readNodeRecords(redis)).map(String).filter((id) => !declared.has(id) && (name === undefined || name === id));
  if (ids.length === 0) return [];
  const p = redis.pipeline();
  ids.forEach((id) => p.get(keys.nodeUiName(id)).hgetall(keys.nodeVpn(id)).smembers(keys.nodeFlags(id)));
  const res = (await p.exec()) ?? [];
  return ids.map((id, i) => {
    const ui = (res[i * 3]?.[1] as string | null) ?? `node${id}`;
    const vpn = (res[i * 3 + 1]?.[1] ?? {}) as Record<string, string>;
    const flags = (res[i * 3 + 2]?.[1] ?? []) as string[];
    return [id, ui, vpn.ip_address ?? vpn.endpoint ?? '', [...flags].sort().join(','), '-', ...(wide ? ['(NS8 record)'] : [])].map((c, j) => (j === 4 && !wide ? '- (NS8 record)' : c));
  });
}

/** `{"tcp":"20000-20001","udp":"20002"}` -> `tcp 20000-20001, udp 20002`. */
function formatPorts(ports: unknown): string {
  if (!ports || typeof ports !== 'object') return '';
  return Object.entries(ports as Record<string, unknown>).map(([proto, range]) => `${proto} ${String(range)}`).join(', ');
}

/**
 * Updates the repositories offer to the installed instances among `objects` (Modules), keyed by
 * id; `version` specs fill `inSpec`. Repository failures go to stderr as warnings.
 */
async function readUpdates(redis: Redis, objects: readonly StoredObject[], deps: CliDeps): Promise<Map<string, InstanceUpdates>> {
  const versionSpecs = new Map<string, string>();
  for (const o of objects) {
    if (o.object.kind === 'Module' && o.object.spec.module !== undefined && o.object.spec.image === undefined) versionSpecs.set(o.object.metadata.name, o.object.spec.version ?? 'latest');
  }
  // The resolver (semver ranges, repository reading) loads only for the formats that show updates.
  const [{ readCoreVersion }, { updatesFromRedis }] = await Promise.all([import('../../repository/core-version.js'), import('../../repository/installed.js')]);
  const coreVersion = await readCoreVersion({ env: deps.env });
  const { updates } = await updatesFromRedis(redis, { versionSpecs, coreVersion, onWarning: (m) => deps.stderr(`warning: ${m}\n`) });
  const wanted = new Set(objects.map((o) => o.object.metadata.name));
  return new Map(updates.filter((u) => wanted.has(u.id)).map((u) => [u.id, u]));
}

/** `status.updates` of `get -o json|yaml`: what the repositories offer the running instance. */
function updatesDocument(u: InstanceUpdates): Record<string, unknown> {
  return { current: u.current, update: u.update ?? null, testingUpdate: u.testingUpdate ?? null, inSpec: u.inSpec ?? null, blocked: u.blocked.map((b) => ({ ...b })) };
}

/**
 * Secret names marked by the configure-module schemas of the Modules among `objects` that have a
 * configuration, found cheaply (install dirs and the schema cache; see schemaSecretNames). The
 * schema code loads only when such a Module is shown.
 */
async function schemaMarks(objects: readonly StoredObject[], statuses: ReadonlyMap<string, ModuleStatus>): Promise<Map<string, Set<string>>> {
  const modules = objects.flatMap((o) => (o.object.kind === 'Module' && o.object.spec.configuration !== undefined ? [o.object] : []));
  if (modules.length === 0) return new Map();
  const installed = new Map<string, string>();
  for (const m of modules) {
    const url = statuses.get(m.metadata.name)?.imageUrl;
    if (typeof url === 'string' && url) installed.set(m.metadata.name, url);
  }
  const { schemaSecretNames } = await import('../../apply/configuration-check.js');
  return schemaSecretNames(modules, installed);
}

function toDocument(o: StoredObject, status: ModuleStatus | undefined, updates?: InstanceUpdates, summary?: ObjectSummary): Record<string, unknown> {
  const obj = o.object as ManifestObject;
  const conditions = mergedConditions(o, status, summary);
  const current = currentSummary(o, summary);
  let fullStatus: Record<string, unknown> | undefined = status || conditions ? { ...(status ?? {}), ...(conditions ? { conditions } : {}) } : undefined;
  if (current?.suspended) fullStatus = { ...(fullStatus ?? {}), suspended: true };
  if (updates) fullStatus = { ...(fullStatus ?? {}), updates: updatesDocument(updates) };
  return {
    apiVersion: obj.apiVersion,
    kind: obj.kind,
    metadata: {
      ...obj.metadata,
      generation: o.generation,
      ...(o.deleting
        ? {
            deletionRequested: true,
            removalPolicy: o.deleting.removalPolicy,
            ...(o.deleting.by ? { deletionRequestedBy: o.deleting.by } : {}),
            ...(o.deleting.at ? { deletionTimestamp: o.deleting.at } : {}),
            ...(o.deleting.why ? { deletionReason: o.deleting.why } : {}),
          }
        : {}),
      ...(o.finalizers.length > 0 ? { finalizers: o.finalizers } : {}),
      annotations: {
        ...(obj.metadata.annotations ?? {}),
        'ns8ctl.nethserver.org/source': o.source,
        ...(o.revision ? { 'ns8ctl.nethserver.org/revision': o.revision } : {}),
        'ns8ctl.nethserver.org/applyset': o.applySet,
      },
    },
    spec: obj.spec,
    ...(fullStatus ? { status: fullStatus } : {}),
  };
}

/** Ids made of lowercase letters and a number without leading zero (`webapp12`, `traefik`). */
const PLAIN_ID = /^[a-z]+(0|[1-9][0-9]{0,14})?$/;

/**
 * `list` in the order of `localeCompare(_, 'en', { numeric: true })` of its keys (`Kind/id`, all
 * of one kind). When every id is a plain one (PLAIN_ID), that order is the natural order
 * (compareNatural), which needs no ICU collator: creating one costs about 10 ms of CPU at every
 * `get`. Other ids (with `-`, `_`, digits inside) are sorted by the collator as before.
 */
export function sortLikeLocale<T>(list: readonly T[], idOf: (item: T) => string, keyOf: (item: T) => string = idOf): T[] {
  if (list.every((item) => PLAIN_ID.test(idOf(item)))) return sortNatural(list, idOf);
  return [...list].sort((a, b) => keyOf(a).localeCompare(keyOf(b), 'en', { numeric: true }));
}

/**
 * `ns8ctl get modules|repositories|nodes|sources [NAME] [-o table|wide|json|yaml] [--show-secrets]`:
 * desired objects with their generation, source and, for modules, the status the node agent
 * reported merged with the controller's conditions (STATUS shows Stalled, Drifted, Configuring,
 * Suspended; `status.conditions` lists them). For modules, `-o wide` adds the node agent's IMAGE
 * and TARGET (an update under way or refused), an UPDATE column, PORTS and SOURCE; `-o json|yaml`
 * adds `status.updates` with the versions the repositories offer the installed instance
 * (repositories are read only for these formats, and only when an instance is installed).
 * Secret-looking values are masked in every format (as in plans) unless `showSecrets`.
 * `get sources` lists the controller's sources (getSources).
 * @throws UsageError for an unknown resource or format; NotFoundError for an unknown NAME.
 */
export async function getCommand(resource: string, name: string | undefined, opts: GetOptions, deps: CliDeps): Promise<number> {
  if (SOURCE_RESOURCES.has(resource.toLowerCase())) return getSources(name, opts, deps);
  if (!RESOURCES[resource.toLowerCase()]) throw new UsageError(`unknown resource type "${resource}"; allowed: modules, repositories, nodes, backupdestinations (bd), backupschedules (bs), sources (and available)`);
  const kind = resourceKind(resource);
  const format = parseOutput(opts.output, ['table', 'wide', 'json', 'yaml'], 'table');
  const { redis } = await deps.connect({ lite: true });
  const state = await readClusterState(redis);
  let objects = [...state.objects.values()].filter((o) => o.object.kind === kind);
  objects = sortLikeLocale(objects, (o) => o.key.slice(kind.length + 1), (o) => o.key);
  if (name !== undefined) {
    objects = objects.filter((o) => o.key === `${kind}/${name}`);
    if (objects.length === 0) throw new NotFoundError(`${kind.toLowerCase()} "${name}" not found in desired state`);
  }
  const ids = objects.map((o) => o.key.slice(kind.length + 1));
  const statuses = kind === 'Module' ? await readStatuses(redis, ids) : new Map<string, ModuleStatus>();
  const summaries = kind === 'Module' ? await readModuleSummaries(redis, ids) : new Map<string, ObjectSummary>();
  const passwords = kind === 'BackupDestination' ? await readPasswordStates(redis, ids) : new Map<string, PasswordState>();
  const withUpdates = kind === 'Module' && format !== 'table' && objects.length > 0;
  const scheduleNames = [...state.objects.values()].filter((o) => o.object.kind === 'BackupSchedule').map((o) => o.object.metadata.name);
  const backups = withUpdates ? await readBackupStatuses(redis, ids, scheduleNames) : new Map<string, Record<string, Record<string, string>>>();
  const updates = withUpdates ? await readUpdates(redis, objects, deps) : new Map<string, InstanceUpdates>();
  const mask = <T>(v: T): T => (opts.showSecrets ? v : maskSecrets(v));
  if (format === 'json' || format === 'yaml') {
    // Each document is masked by the name rule plus the names its module's schema marks secret.
    const marked = opts.showSecrets ? new Map<string, Set<string>>() : await schemaMarks(objects, statuses);
    const docs = objects.map((o, i) => {
      const doc = toDocument(o, statuses.get(ids[i]!), updates.get(ids[i]!), summaries.get(ids[i]!));
      if (kind === 'BackupDestination') doc.status = { conditions: [passwordCondition(ids[i]!, passwords.get(ids[i]!) ?? 'missing')] };
      const runs = backups.get(ids[i]!);
      if (runs) doc.status = { ...((doc.status as Record<string, unknown> | undefined) ?? {}), backups: backupsDocument(runs) };
      const names = marked.get(ids[i]!);
      return opts.showSecrets ? doc : maskSecrets(doc, names ? { secretNames: names } : {});
    });
    const value = mask(name !== undefined ? docs[0] : { apiVersion: 'v1', kind: 'List', items: docs });
    deps.stdout(format === 'json' ? renderJson(value) : renderYaml(value));
    return 0;
  }
  if (objects.length === 0 && (kind !== 'Node' || (await readNodeRecords(redis)).length === 0)) {
    deps.stderr(`No ${kind.toLowerCase()}s in desired state.\n`);
    return 0;
  }
  const text = (v: string): string => (opts.showSecrets ? v : maskString(v));
  const wide = format === 'wide';
  let columns: string[];
  let rows: string[][];
  if (kind === 'Module') {
    columns = ['name', 'module', 'version', 'node', 'gen', 'status', ...(wide ? ['image', 'target', 'update', 'ports', 'last backup', 'source'] : [])];
    const now = Date.now();
    rows = objects.map((o, i) => {
      const spec = (o.object as Extract<ManifestObject, { kind: 'Module' }>).spec;
      const id = ids[i]!;
      const s = statuses.get(id);
      const image = typeof s?.imageUrl === 'string' && s.imageUrl ? s.imageUrl : spec.image ?? '';
      const target = typeof s?.targetImage === 'string' && s.targetImage !== image ? s.targetImage : '';
      return [
        id, spec.module ?? (spec.image ?? '').split('/').pop()?.replace(/[:@].*$/, '') ?? '', spec.image ? (spec.image.split(':').pop() ?? '') : spec.version ?? 'latest',
        String(spec.node), String(o.generation), statusWord(o, s, summaries.get(id)),
        ...(wide ? [text(image), text(target), describeUpdate(updates.get(id), spec.image === undefined ? spec.version ?? 'latest' : undefined), formatPorts(s?.ports), lastBackupCell(backups.get(id), now), o.source] : []),
      ];
    });
  } else if (kind === 'Repository') {
    columns = ['name', 'url', 'enabled', 'testing', 'gen', ...(wide ? ['source'] : [])];
    rows = objects.map((o) => {
      const spec = (o.object as Extract<ManifestObject, { kind: 'Repository' }>).spec;
      return [o.object.metadata.name, text(spec.url), String(spec.enabled ?? true), String(spec.testing ?? false), String(o.generation), ...(wide ? [o.source] : [])];
    });
  } else if (kind === 'BackupDestination' || kind === 'BackupSchedule') {
    ({ columns, rows } = backupTable(objects, passwords, wide, text));
  } else {
    columns = ['id', 'name', 'address', 'flags', 'gen', ...(wide ? ['source'] : [])];
    rows = objects.map((o) => {
      const spec = (o.object as Extract<ManifestObject, { kind: 'Node' }>).spec;
      return [String(spec.id), o.object.metadata.name, spec.address ?? '', (spec.flags ?? []).join(','), String(o.generation), ...(wide ? [o.source] : [])];
    });
    rows.push(...(await nodeRecordRows(redis, objects, name, wide)));
  }
  deps.stdout(renderTable(columns, rows));
  return 0;
}

// ---- get sources ---------------------------------------------------------------------------------

const SOURCE_RESOURCES = new Set(['source', 'sources', 'src']);

/** Names of the sources a controller has reported on (`ns8ctl/source/<name>`, found by SCAN), sorted. */
export async function listSourceNames(redis: Redis): Promise<string[]> {
  const prefix = keys.sourceStatus('');
  return (await scanNames(redis, prefix, { nested: true, count: 500 })).sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
}

/** `Ready`, `Stalled (<reason>)`, `Reconciling (<reason>)`, `NotReady (<reason>)` or `Unknown (<reason>)` from a source's conditions. */
export function sourceStatusWord(s: SourceStatus): string {
  const why = (c: ControllerCondition | undefined): string => (c?.reason ? ` (${c.reason})` : '');
  const stalled = findCondition(s.conditions, 'Stalled');
  if (stalled?.status === 'True') return `Stalled${why(stalled)}`;
  const ready = findCondition(s.conditions, 'Ready');
  if (ready?.status === 'True') return 'Ready';
  const reconciling = findCondition(s.conditions, 'Reconciling');
  if (reconciling?.status === 'True') return `Reconciling${why(reconciling)}`;
  if (ready?.status === 'False') return `NotReady${why(ready)}`;
  return `Unknown${why(ready)}`;
}

function sourceDocument(s: SourceStatus): Record<string, unknown> {
  return {
    apiVersion: 'ns8ctl.nethserver.org/v1',
    kind: 'Source',
    metadata: { name: s.name },
    spec: { kind: s.kind, url: s.url, branch: s.branch, path: s.path, prune: s.prune },
    status: {
      conditions: s.conditions,
      lastAppliedRevision: s.lastAppliedRevision,
      lastAttemptedRevision: s.lastAttemptedRevision,
      lastAppliedTime: s.lastAppliedTime,
      lastError: s.lastError,
      driftedKeys: s.driftedKeys,
    },
  };
}

/**
 * `ns8ctl get sources [NAME] [-o table|wide|json|yaml]`: the status the controller keeps for each
 * source (`ns8ctl/source/<name>`, src/controller/source-status.ts): NAME, KIND, URL, BRANCH,
 * REVISION (12 characters), STATUS (sourceStatusWord), LAST APPLIED; `wide` adds PATH, PRUNE,
 * LAST ERROR and the Ready message. URL passwords are masked unless `showSecrets`.
 * @throws NotFoundError when NAME has no status (no controller ran that source).
 */
export async function getSources(name: string | undefined, opts: GetOptions, deps: CliDeps): Promise<number> {
  const format = parseOutput(opts.output, ['table', 'wide', 'json', 'yaml'], 'table');
  const { redis } = await deps.connect({ lite: true });
  const names = name !== undefined ? [name] : await listSourceNames(redis);
  const found: SourceStatus[] = [];
  for (const n of names) {
    const s = await readSourceStatus(redis, n);
    if (s) found.push(opts.showSecrets ? s : { ...s, url: maskString(s.url) });
  }
  if (name !== undefined && found.length === 0) throw new NotFoundError(`source "${name}" has no status: no controller has reconciled it (see \`ns8ctl get sources\`)`);
  if (format === 'json' || format === 'yaml') {
    const docs = found.map(sourceDocument);
    const value = name !== undefined ? docs[0] : { apiVersion: 'v1', kind: 'List', items: docs };
    deps.stdout(format === 'json' ? renderJson(value) : renderYaml(value));
    return 0;
  }
  if (found.length === 0) {
    deps.stderr('No sources: no controller has reported yet (`ns8ctl controller` or `ns8ctl run`).\n');
    return 0;
  }
  const wide = format === 'wide';
  const columns = ['name', 'kind', 'url', 'branch', 'revision', 'status', 'last applied', ...(wide ? ['path', 'prune', 'last error', 'message'] : [])];
  const rows = found.map((s) => [
    s.name, s.kind, s.url, s.branch || '-', s.lastAppliedRevision ? s.lastAppliedRevision.slice(0, 12) : '-', sourceStatusWord(s), s.lastAppliedTime || '-',
    ...(wide ? [s.path || '-', String(s.prune), s.lastError || '-', findCondition(s.conditions, 'Ready')?.message ?? ''] : []),
  ]);
  deps.stdout(renderTable(columns, rows));
  return 0;
}
