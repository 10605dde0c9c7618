import type { Redis } from 'ioredis';
import { NotFoundError, UsageError } from '../../errors.js';
import type { Kind, ManifestObject } from '../../manifest/types.js';
import { maskSecrets, maskString } from '../../plan/mask.js';
import type { StoredObject } from '../../plan/state.js';
import { readCoreVersion } from '../../repository/core-version.js';
import { updatesFromRedis } from '../../repository/installed.js';
import type { InstanceUpdates } from '../../repository/resolve.js';
import { describeUpdate } from '../../repository/update-text.js';
import { keys } from '../../state/keys.js';
import { readClusterState, readNodeRecords } from '../../state/read-state.js';
import type { CliDeps } from '../deps.js';
import { parseOutput, renderJson, renderTable, renderYaml } from '../output.js';

/** Resource names `get` accepts, with their kind (kubectl-style singular/plural/short forms). */
const RESOURCES: Record<string, Kind> = {
  module: 'Module', modules: 'Module', mod: 'Module',
  repository: 'Repository', repositories: 'Repository', repo: 'Repository', repos: 'Repository',
  node: 'Node', nodes: 'Node',
};

export function resourceKind(name: string): Kind {
  const kind = RESOURCES[name.toLowerCase()];
  if (!kind) throw new UsageError(`unknown resource type "${name}"; allowed: modules, repositories, nodes`);
  return kind;
}

export interface GetOptions {
  output?: string;
  /** Print secret-looking values (spec.configuration passwords, URL passwords) as they are; default masked. */
  showSecrets?: boolean;
}

interface Condition { type: string; status: string; reason?: string; message?: string }

/** The observed status a node agent wrote for one module (`ns8ctl/status/module/<id>`), parsed. */
export type ModuleStatus = Record<string, unknown> & { conditions?: Condition[]; observedGeneration?: number };

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

/** Short status word for tables: Terminating, Ready, Degraded, Progressing, or Pending (no agent yet). */
export function statusWord(o: StoredObject, s: ModuleStatus | undefined): string {
  if (o.deleting) return 'Terminating';
  const conds = s?.conditions ?? [];
  const on = (t: string): Condition | undefined => conds.find((c) => c.type === t && c.status === 'True');
  if (on('Degraded')) return `Degraded${on('Degraded')?.reason ? ` (${on('Degraded')?.reason})` : ''}`;
  if (on('Ready') && s?.observedGeneration === o.generation) return 'Ready';
  if (on('Progressing') || (s && s.observedGeneration !== o.generation)) return 'Progressing';
  return 'Pending';
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
  const coreVersion = await readCoreVersion({ env: deps.env });
  const { updates } = await updatesFromRedis(redis, { versionSpecs, coreVersion, onWarning: (m) => deps.stderr(`warning: ${m}\n`) });
  const wanted = new Set(objects.map((o) => o.object.metadata.name));
  return new Map(updates.filter((u) => wanted.has(u.id)).map((u) => [u.id, u]));
}

/** `status.updates` of `get -o json|yaml`: what the repositories offer the running instance. */
function updatesDocument(u: InstanceUpdates): Record<string, unknown> {
  return { current: u.current, update: u.update ?? null, testingUpdate: u.testingUpdate ?? null, inSpec: u.inSpec ?? null, blocked: u.blocked.map((b) => ({ ...b })) };
}

function toDocument(o: StoredObject, status: ModuleStatus | undefined, updates?: InstanceUpdates): Record<string, unknown> {
  const obj = o.object as ManifestObject;
  const fullStatus = updates ? { ...(status ?? {}), updates: updatesDocument(updates) } : status;
  return {
    apiVersion: obj.apiVersion,
    kind: obj.kind,
    metadata: {
      ...obj.metadata,
      generation: o.generation,
      ...(o.deleting ? { deletionRequested: true, removalPolicy: o.deleting.removalPolicy } : {}),
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

/**
 * `ns8ctl get modules|repositories|nodes [NAME] [-o table|wide|json|yaml]`: desired objects with
 * their generation, source and, for modules, the status the node agent reported. For modules,
 * `-o wide` adds an UPDATE column and `-o json|yaml` a `status.updates` object with the versions
 * the repositories offer the installed instance (repositories are read only for these formats,
 * and only when an instance is installed). Secret-looking values are masked in every format (as
 * in plans) unless `showSecrets`.
 * @throws UsageError for an unknown resource or format; NotFoundError for an unknown NAME.
 */
export async function getCommand(resource: string, name: string | undefined, opts: GetOptions, deps: CliDeps): Promise<number> {
  const kind = resourceKind(resource);
  const format = parseOutput(opts.output, ['table', 'wide', 'json', 'yaml'], 'table');
  const { redis } = await deps.connect();
  const state = await readClusterState(redis);
  let objects = [...state.objects.values()].filter((o) => o.object.kind === kind);
  objects.sort((a, b) => a.key.localeCompare(b.key, 'en', { numeric: true }));
  if (name !== undefined) {
    objects = objects.filter((o) => o.key === `${kind}/${name}`);
    if (objects.length === 0) throw new NotFoundError(`${kind.toLowerCase()} "${name}" not found in desired state`);
  }
  const statuses = kind === 'Module' ? await readStatuses(redis, objects.map((o) => o.key.slice('Module/'.length))) : new Map<string, ModuleStatus>();
  const withUpdates = kind === 'Module' && format !== 'table' && objects.length > 0;
  const updates = withUpdates ? await readUpdates(redis, objects, deps) : new Map<string, InstanceUpdates>();
  const docs = objects.map((o) => toDocument(o, statuses.get(o.key.slice(kind.length + 1)), updates.get(o.key.slice(kind.length + 1))));
  if (format === 'json' || format === 'yaml') {
    const value = name !== undefined ? docs[0] : { apiVersion: 'v1', kind: 'List', items: docs };
    const shown = opts.showSecrets ? value : maskSecrets(value);
    deps.stdout(format === 'json' ? renderJson(shown) : renderYaml(shown));
    return 0;
  }
  const text = (v: string): string => (opts.showSecrets ? v : maskString(v));
  if (objects.length === 0 && (kind !== 'Node' || (await readNodeRecords(redis)).length === 0)) {
    deps.stderr(`No ${kind.toLowerCase()}s in desired state.\n`);
    return 0;
  }
  const wide = format === 'wide';
  let columns: string[];
  let rows: string[][];
  if (kind === 'Module') {
    columns = ['name', 'module', 'version', 'node', 'gen', 'status', ...(wide ? ['image', 'update', 'ports', 'source'] : [])];
    rows = objects.map((o) => {
      const spec = (o.object as Extract<ManifestObject, { kind: 'Module' }>).spec;
      const id = o.key.slice('Module/'.length);
      const s = statuses.get(id);
      const image = typeof s?.imageUrl === 'string' && s.imageUrl ? s.imageUrl : spec.image ?? '';
      return [
        id, spec.module ?? (spec.image ?? '').split('/').pop()?.replace(/[:@].*$/, '') ?? '', spec.image ? (spec.image.split(':').pop() ?? '') : spec.version ?? 'latest',
        String(spec.node), String(o.generation), statusWord(o, s),
        ...(wide ? [text(image), describeUpdate(updates.get(id), spec.image === undefined ? spec.version ?? 'latest' : undefined), formatPorts(s?.ports), o.source] : []),
      ];
    });
  } else if (kind === 'Repository') {
    columns = ['name', 'url', 'enabled', 'testing', 'gen', ...(wide ? ['source'] : [])];
    rows = objects.map((o) => {
      const spec = (o.object as Extract<ManifestObject, { kind: 'Repository' }>).spec;
      return [o.object.metadata.name, text(spec.url), String(spec.enabled ?? true), String(spec.testing ?? false), String(o.generation), ...(wide ? [o.source] : [])];
    });
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
