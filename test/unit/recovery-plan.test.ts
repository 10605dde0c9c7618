/**
 * The pure deciders of recovery: planRecovery (what a host's instances become) and planRestore
 * (what a saved snapshot writes over the current state). Plain data in, data out.
 */
import { emptyState } from '../../src/state/cluster-state.js';
import { planRecovery, type RecoverableInstance } from '../../src/plan/recovery.js';
import { CLUSTER_EPOCH_KEY, planRestore, type StateSnapshot } from '../../src/state/state-snapshot.js';

const inst = (id: string, extra: { [K in keyof RecoverableInstance]?: RecoverableInstance[K] | undefined } = {}): RecoverableInstance => {
  const i: RecoverableInstance = {
  id,
  rootfull: false,
  envFile: `/home/${id}/.config/state/environment`,
  env: { MODULE_ID: id, MODULE_UUID: `uuid-${id}`, IMAGE_URL: 'ghcr.io/x/webapp:1.0.0', ADMIN_PASSWORD: 'pw-secret' },
  node: 1,
  imageUrl: 'ghcr.io/x/webapp:1.0.0',
  uuid: `uuid-${id}`,
  ports: { tcp: { start: 20001, end: 20001 } },
  volumeBases: [],
  removing: false,
  };
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete (i as unknown as Record<string, unknown>)[k];
    else (i as unknown as Record<string, unknown>)[k] = v;
  }
  return i;
};

const observed = (over: Partial<Parameters<typeof planRecovery>[1]> = {}): Parameters<typeof planRecovery>[1] => ({ state: emptyState(), knownNodes: [1], envRedis: new Map(), nodePorts: new Map(), ...over });

describe('planRecovery', () => {
  test('writes only what Redis lacks or has otherwise: a uuid already right, an equal environment and a recorded port range are left alone', () => {
    const state = emptyState();
    state.moduleUuid.set('webapp1', 'uuid-webapp1');
    const p = planRecovery([inst('webapp1')], observed({ state, envRedis: new Map([['webapp1', { MODULE_ID: 'webapp1', MODULE_UUID: 'uuid-webapp1', IMAGE_URL: 'ghcr.io/x/webapp:1.0.0', ADMIN_PASSWORD: 'old' }]]), nodePorts: new Map([[1, { 'webapp1/tcp': '20001-20001' }]]) }));
    expect(p.bookkeeping).toEqual([
      { op: 'hset', key: 'ns8ctl/desired/module/webapp1', field: 'finalizers', value: 'node-agent' },
      { op: 'hset', key: 'module/webapp1/environment', field: 'ADMIN_PASSWORD', value: 'pw-secret' },
    ]);
    // What the operator is shown names variables by count, never their values.
    expect(p.restored).toEqual(['module/webapp1/environment: 1 variable(s) from /home/webapp1/.config/state/environment']);
  });

  test('a uuid that differs from the instance is set to the instance one (its identity on the host)', () => {
    const state = emptyState();
    state.moduleUuid.set('webapp1', 'uuid-other');
    expect(planRecovery([inst('webapp1')], observed({ state })).bookkeeping[0]).toEqual({ op: 'hset', key: 'cluster/module_uuid', field: 'webapp1', value: 'uuid-webapp1' });
  });

  test('without a node in the record or environment, --node gives it; with none at all the instance is skipped', () => {
    expect(planRecovery([inst('a1', { node: undefined })], observed(), { onlyNode: 1 }).instances.map((i) => i.node)).toEqual([1]);
    expect(planRecovery([inst('a1', { node: undefined })], observed()).skipped).toEqual([{ id: 'a1', why: 'its node is unknown (no node in the record, no NODE_ID in /home/a1/.config/state/environment): pass --node N' }]);
  });

  test('an unknown node gets one Node object, listed before the Modules', () => {
    const p = planRecovery([inst('b1', { node: 3 }), inst('a1', { node: 3 })], observed({ knownNodes: [] }));
    expect(p.objects.map((o) => `${o.object.kind}/${o.id}`)).toEqual(['Node/node3', 'Module/a1', 'Module/b1']);
  });
});

const snap = (over: Partial<StateSnapshot> = {}): StateSnapshot => ({ version: 1, objects: [], inventories: {}, epoch: null, strings: {}, hashes: {}, sets: {}, ...over });
const obj = (id: string, image: string, fields: Record<string, string> = {}) => ({
  kind: 'Module' as const,
  id,
  fields: { object: JSON.stringify({ apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: id }, spec: { image, node: 1 } }), generation: '3', source: 'a.yaml', revision: '', applyset: 'default', ...fields },
});

describe('planRestore', () => {
  test('counters are only raised, set members only added, the epoch always the saved one', () => {
    const saved = snap({ strings: { 'cluster/module_sequence/webapp': '4', 'cluster/module_sequence/mail': '2' }, sets: { 'node/1/flags': ['a', 'b'] }, epoch: '{"id":"e1"}' });
    const current = snap({ strings: { 'cluster/module_sequence/webapp': '9' }, sets: { 'node/1/flags': ['b', 'c'] }, epoch: '{"id":"e2"}' });
    const p = planRestore(saved, current, { force: false });
    expect(p.conflicts).toEqual([]);
    expect(p.ops).toEqual([
      { op: 'set', key: CLUSTER_EPOCH_KEY, value: '{"id":"e1"}' },
      { op: 'atleast', key: 'cluster/module_sequence/mail', value: 2 },
      { op: 'sadd', key: 'node/1/flags', member: 'a' },
    ]);
  });

  test('a different object or hash value is a conflict naming fields, never values; --force writes the file and expects the current object', () => {
    const saved = snap({ objects: [obj('web1', 'ghcr.io/x/web:1.0.0', { finalizers: 'node-agent' })], hashes: { 'cluster/repository/extra': { url: 'https://u:saved-secret@r.example/', status: '1' } } });
    const current = snap({ objects: [obj('web1', 'ghcr.io/x/web:2.0.0', { generation: '4' })], hashes: { 'cluster/repository/extra': { url: 'https://u:live-secret@r.example/' } } });
    const refused = planRestore(saved, current, { force: false });
    expect(refused.conflicts).toEqual([
      'Module/web1: desired state has another Module (generation 4, apply set default) than the file (generation 3, apply set default)',
      'cluster/repository/extra: field(s) url differ from the file',
    ]);
    expect(JSON.stringify(refused)).not.toContain('secret');
    const forced = planRestore(saved, current, { force: true });
    expect(forced.ops[0]).toEqual({ op: 'expect', key: 'ns8ctl/desired/module/web1', object: current.objects[0]!.fields.object, label: 'Module/web1' });
    expect(forced.ops.filter((o) => o.op === 'hset').map((o) => (o.op === 'hset' ? `${o.key} ${o.field}` : ''))).toEqual([
      'ns8ctl/desired/module/web1 finalizers',
      'ns8ctl/desired/module/web1 generation',
      'cluster/repository/extra status',
      'cluster/repository/extra url',
    ]);
  });

  test('hashes the node agents rebuild from the hosts only get missing fields: a different value is the host\'s, kept even with --force', () => {
    const saved = snap({ hashes: { 'module/web1/environment': { TCP_PORT: '20001', OLD: 'x' }, 'ns8ctl/node/1/ports': { 'web1/tcp': '20001-20001' } } });
    const current = snap({ hashes: { 'module/web1/environment': { TCP_PORT: '20005' }, 'ns8ctl/node/1/ports': { 'web1/tcp': '20005-20005' } } });
    const p = planRestore(saved, current, { force: true });
    expect(p.conflicts).toEqual([]);
    expect(p.ops).toEqual([{ op: 'hset', key: 'module/web1/environment', field: 'OLD', value: 'x' }]);
  });

  test('an object equal in every field is left alone and counted', () => {
    const o = obj('web1', 'ghcr.io/x/web:1.0.0');
    const p = planRestore(snap({ objects: [o] }), snap({ objects: [o] }), { force: false });
    expect(p).toEqual({ ops: [], conflicts: [], changes: [], unchanged: 1 });
  });
});
