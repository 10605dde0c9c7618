/** Small builders for planner and renderer tests: desired objects and stored state by hand. */
import { API_VERSION, objectKey } from '../../src/manifest/types.js';
import type { DesiredObject, ManifestObject, ModuleObject, ModuleSpec, NodeObject, RepositoryObject } from '../../src/manifest/types.js';
import { emptyState } from '../../src/state/cluster-state.js';
import type { ClusterState, StoredObject } from '../../src/state/cluster-state.js';

export function mod(id: string, spec: Partial<ModuleSpec> = {}, labels?: Record<string, string>): ModuleObject {
  const module = id.replace(/[0-9]+$/, '');
  return {
    apiVersion: API_VERSION,
    kind: 'Module',
    metadata: labels ? { name: id, labels } : { name: id },
    spec: { module, node: 1, ...spec },
  };
}

export function repo(name: string, url: string, extra: { enabled?: boolean; testing?: boolean } = {}): RepositoryObject {
  return { apiVersion: API_VERSION, kind: 'Repository', metadata: { name }, spec: { url, ...extra } };
}

export function node(id: number, name: string, flags?: string[]): NodeObject {
  return { apiVersion: API_VERSION, kind: 'Node', metadata: { name }, spec: flags ? { id, flags } : { id } };
}

export function desired(...objects: ManifestObject[]): DesiredObject[] {
  return objects.map((object, doc) => ({ object, source: { file: 'manifests/test.yaml', doc, line: 1, col: 1 } }));
}

export function stored(object: ManifestObject, extra: Partial<StoredObject> = {}): StoredObject {
  return {
    key: objectKey(object),
    object,
    generation: 1,
    source: 'manifests/test.yaml',
    revision: '',
    applySet: 'default',
    finalizers: [],
    ...extra,
  };
}

/** A state where `objects` were applied by apply set `default` with all NS8 bookkeeping in place. */
export function appliedState(objects: ManifestObject[], extra: Partial<StoredObject> = {}): ClusterState {
  const s = emptyState();
  const inv = new Set<string>();
  for (const o of objects) {
    const st = stored(o, extra);
    s.objects.set(st.key, st);
    inv.add(st.key);
    if (o.kind === 'Module') {
      s.moduleNode.set(o.metadata.name, String(o.spec.node));
      s.moduleUuid.set(o.metadata.name, `uuid-${o.metadata.name}`);
      const m = /^(.*?)([1-9][0-9]*)$/.exec(o.metadata.name);
      if (m) s.moduleSequence.set(m[1] as string, Math.max(Number(m[2]), s.moduleSequence.get(m[1] as string) ?? 0));
    } else if (o.kind === 'Repository') {
      s.repositories.set(o.metadata.name, { url: o.spec.url, status: o.spec.enabled === false ? '0' : '1', testing: o.spec.testing ? '1' : '0' });
    } else if (o.kind === 'Node') {
      s.nodeUiName.set(String(o.spec.id), o.metadata.name);
      if (o.spec.flags) s.nodeFlags.set(String(o.spec.id), [...o.spec.flags]);
    }
  }
  if (inv.size) s.inventory.set(extra.applySet ?? 'default', inv);
  return s;
}

export const uuidFor = (id: string): string => `uuid-${id}`;
