import { cond, moduleTransitionEvent, sameConditions, stampConditions, summarizeModule, transitions, type ModuleFacts } from '../../src/controller/conditions.js';
import { formatEventLine, parseStreamEntry } from '../../src/state/events.js';
import { StatusChangeTracker } from '../../src/cli/local-node-agent.js';
import { changedModules, decodeNotification } from '../../src/controller/notifications.js';
import { parseSuspendTarget } from '../../src/controller/suspend.js';
import type { ModuleStatus } from '../../src/node-agent/types.js';
import type { NodeReconcileResult } from '../../src/node-agent/reconcile.js';
import { UsageError } from '../../src/errors.js';

const agent = (over: Partial<ModuleStatus> = {}): ModuleStatus => ({
  id: 'webapp1',
  node: 1,
  observedGeneration: 3,
  conditions: [
    { type: 'Ready', status: 'True', reason: 'Converged', message: 'running' },
    { type: 'Progressing', status: 'False', reason: 'Converged', message: '' },
    { type: 'Degraded', status: 'False', reason: 'Converged', message: '' },
  ],
  imageUrl: 'x',
  imageDigest: 'sha256:1',
  ports: {},
  units: [],
  drift: [],
  ...over,
});
const facts = (over: Partial<ModuleFacts> = {}): ModuleFacts => ({ id: 'webapp1', generation: 3, revision: 'abc', source: 'm/wiki.yaml', deleting: false, node: 1, agent: agent(), ...over });
const short = (f: ModuleFacts): string[] => summarizeModule(f).conditions.map((c) => `${c.type}=${c.status}/${c.reason}`);

describe('module summaries (summarizeModule)', () => {
  it('is Ready and not Reconciling when the agent runs the desired generation', () => {
    expect(short(facts())).toEqual(['Ready=True/Converged', 'Reconciling=False/Converged', 'Stalled=False/NotStalled', 'Drifted=False/NoDrift']);
    expect(summarizeModule(facts())).toMatchObject({ generation: 3, observedGeneration: 3, lastAppliedRevision: 'abc', source: 'm/wiki.yaml', suspended: false });
  });

  it('waits for a node agent that never reported', () => {
    expect(short(facts({ agent: undefined }))).toEqual(['Ready=Unknown/AwaitingNodeAgent', 'Reconciling=True/AwaitingNodeAgent', 'Stalled=False/NotStalled', 'Drifted=False/NoDrift']);
  });

  it('is Reconciling while the agent is behind the desired generation, whatever it says about the old one', () => {
    expect(short(facts({ generation: 4 })).slice(0, 2)).toEqual(['Ready=False/Progressing', 'Reconciling=True/Progressing']);
  });

  it('is Stalled only for agent reasons no retry can fix', () => {
    const degraded = (reason: string): ModuleStatus => agent({ conditions: [{ type: 'Ready', status: 'False', reason, message: 'm' }, { type: 'Degraded', status: 'True', reason, message: 'boom' }] });
    expect(short(facts({ agent: degraded('ImageLabelInvalid') })).slice(0, 3)).toEqual(['Ready=False/ImageLabelInvalid', 'Reconciling=False/ImageLabelInvalid', 'Stalled=True/ImageLabelInvalid']);
    // The node agent stops retrying a refused or failed update too: the controller agrees.
    expect(short(facts({ agent: degraded('UpdateRefused') })).slice(0, 3)).toEqual(['Ready=False/UpdateRefused', 'Reconciling=False/UpdateRefused', 'Stalled=True/UpdateRefused']);
    expect(short(facts({ agent: degraded('UpdateFailed') }))[2]).toBe('Stalled=True/UpdateFailed');
    expect(short(facts({ agent: degraded('RegistryUnreachable') })).slice(0, 3)).toEqual(['Ready=False/RegistryUnreachable', 'Reconciling=True/Retrying', 'Stalled=False/NotStalled']);
  });

  it('reports deletion, suspension and both kinds of drift', () => {
    expect(short(facts({ deleting: true })).slice(0, 2)).toEqual(['Ready=False/Deleting', 'Reconciling=True/Deleting']);
    const s = summarizeModule(facts({ suspended: { reason: 'disk swap', until: '2030-01-01T00:00:00.000Z' } }));
    expect(s.suspended).toBe(true);
    expect(s.conditions[1]).toMatchObject({ type: 'Reconciling', status: 'False', reason: 'Suspended' });
    expect(s.conditions[1]!.message).toContain('disk swap');
    expect(s.conditions[1]!.message).toContain('ns8ctl resume module webapp1');
    expect(short(facts({ agent: agent({ drift: ['unit x stopped'] }) }))[3]).toBe('Drifted=True/HostDriftRepaired');
    expect(short(facts({ desiredDrift: { source: 'default', message: 'changed by hand' } }))[3]).toBe('Drifted=True/DesiredStateDrift');
  });

  it('masks URL passwords in condition messages', () => {
    const a = agent({ conditions: [{ type: 'Degraded', status: 'True', reason: 'RegistryUnreachable', message: 'pull https://bob:hunter2@reg.example/x failed' }] });
    const text = JSON.stringify(summarizeModule(facts({ agent: a })));
    expect(text).not.toContain('hunter2');
    expect(text).toContain('bob:(sensitive value)@');
  });
});

describe('condition bookkeeping', () => {
  const t0 = new Date('2025-01-01T00:00:00Z');
  const t1 = new Date('2025-01-02T00:00:00Z');

  it('keeps the transition time while a status stays and stamps a new one when it changes', () => {
    const first = stampConditions(undefined, [cond('Ready', 'False', 'Progressing', 'a')], t0);
    const same = stampConditions(first, [cond('Ready', 'False', 'Progressing', 'another message')], t1);
    expect(same[0]!.lastTransitionTime).toBe(t0.toISOString());
    const flipped = stampConditions(same, [cond('Ready', 'True', 'Converged', 'ok')], t1);
    expect(flipped[0]!.lastTransitionTime).toBe(t1.toISOString());
  });

  it('compares conditions without their transition times', () => {
    const a = stampConditions(undefined, [cond('Ready', 'True', 'Converged', 'ok')], t0);
    expect(sameConditions(a, [cond('Ready', 'True', 'Converged', 'ok')])).toBe(true);
    expect(sameConditions(a, [cond('Ready', 'True', 'Converged', 'other')])).toBe(false);
    expect(sameConditions(undefined, [])).toBe(false);
  });

  it('names the events of the transitions worth a human, in past tense', () => {
    const prev = [cond('Ready', 'True', 'Converged', ''), cond('Stalled', 'False', 'NotStalled', ''), cond('Drifted', 'False', 'NoDrift', '')];
    const next = [cond('Ready', 'False', 'ImageLabelInvalid', ''), cond('Stalled', 'True', 'ImageLabelInvalid', ''), cond('Drifted', 'True', 'HostDriftRepaired', '')];
    expect(transitions(prev, next).map((t) => moduleTransitionEvent(t)?.name)).toEqual(['module-became-unready', 'module-stalled', 'module-drifted']);
    expect(transitions(undefined, [cond('Ready', 'True', 'Converged', '')]).map((t) => moduleTransitionEvent(t)?.name)).toEqual(['module-became-ready']);
    expect(transitions(undefined, [cond('Ready', 'Unknown', 'AwaitingNodeAgent', '')]).map((t) => moduleTransitionEvent(t))).toEqual([undefined]);
    expect(transitions(prev, prev)).toEqual([]);
  });
});

describe('events', () => {
  it('parses stream entries ns8ctl wrote and ignores anything else', () => {
    const e = { name: 'source-applied', type: 'Normal', object: 'source/default', message: 'm', time: 't' };
    expect(parseStreamEntry(['1-0', ['event', JSON.stringify(e)]])).toEqual({ ...e, id: '1-0' });
    expect(parseStreamEntry(['1-1', ['other', 'x']])).toBeUndefined();
    expect(parseStreamEntry(['1-2', ['event', 'not json']])).toBeUndefined();
    expect(parseStreamEntry(['1-3', ['x', 'event', 'event', '{}']])).toBeUndefined();
    expect(formatEventLine({ ...e, type: 'Normal' })).toBe('t  Normal   source/default  source-applied  m');
  });
});

describe('notifications', () => {
  it('decodes ns8ctl events and keyspace writes to module status, and nothing else', () => {
    expect(decodeNotification('ns8ctl/event/desired-state-changed', '{"keys":[]}')).toEqual({ name: 'desired-state-changed', channel: 'ns8ctl/event/desired-state-changed', payload: { keys: [] } });
    expect(decodeNotification('ns8ctl/event/x', 'not json')?.payload).toBeUndefined();
    expect(decodeNotification('__keyspace@0__:ns8ctl/status/module/webapp1', 'hset')).toEqual({ name: 'module-status-written', channel: '__keyspace@0__:ns8ctl/status/module/webapp1', payload: { module: 'webapp1', op: 'hset' } });
    expect(decodeNotification('__keyspace@0__:other', 'hset')).toBeUndefined();
    expect(decodeNotification('cluster/event/module-added', '{}')).toBeUndefined();
  });

  it('lists the modules a desired-state-changed payload names', () => {
    expect(changedModules({ keys: ['ns8ctl/desired/module/a1', 'ns8ctl/desired/node/1', 'Module/b2'] })).toEqual({ modules: ['a1', 'b2'], other: true });
    expect(changedModules({ keys: ['ns8ctl/desired/module/a1'] })).toEqual({ modules: ['a1'], other: false });
    expect(changedModules(undefined)).toEqual({ modules: [], other: true });
  });
});

describe('suspension targets', () => {
  it('reads `[module ID | source NAME]`, defaulting to the source "default"', () => {
    expect(parseSuspendTarget(undefined, undefined)).toEqual({ kind: 'source', name: 'default' });
    expect(parseSuspendTarget('module', 'webapp1')).toEqual({ kind: 'module', name: 'webapp1' });
    expect(parseSuspendTarget('source', 'prod')).toEqual({ kind: 'source', name: 'prod' });
    expect(parseSuspendTarget('source', undefined)).toEqual({ kind: 'source', name: 'default' });
    expect(() => parseSuspendTarget('node', '1')).toThrow(UsageError);
    expect(() => parseSuspendTarget('module', undefined)).toThrow(UsageError);
    expect(() => parseSuspendTarget('module', 'a/b')).toThrow(UsageError);
  });
});

describe('StatusChangeTracker', () => {
  const pass = (...items: [string, NodeReconcileResult['instances'][number]['outcome'], string?][]): NodeReconcileResult => ({
    node: 1,
    instances: items.map(([id, outcome, ready]) => ({
      id,
      outcome,
      applied: [],
      drift: [],
      retry: false,
      ...(ready ? { status: agent({ id, conditions: [{ type: 'Ready', status: ready as 'True', reason: 'r', message: '' }] }) } : {}),
    })),
  });

  it('announces an instance only when its status changed, or when it was removed', () => {
    const t = new StatusChangeTracker();
    expect(t.changed(pass(['a1', 'converged', 'False'], ['b1', 'unchanged', 'True']))).toEqual(['a1', 'b1']);
    expect(t.changed(pass(['a1', 'unchanged', 'False'], ['b1', 'unchanged', 'True']))).toEqual([]);
    expect(t.changed(pass(['a1', 'converged', 'True'], ['b1', 'skipped']))).toEqual(['a1']);
    expect(t.changed(pass(['a1', 'unchanged', 'True'], ['b1', 'removed']))).toEqual(['b1']);
    expect(t.changed(pass(['a1', 'unchanged', 'True']))).toEqual([]);
  });
});
