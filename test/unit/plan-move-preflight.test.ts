import { describe, expect, it } from '@jest/globals';
import type { ModuleObject } from '../../src/manifest/types.js';
import { movesOf, preflightMoves, type MoveFacts } from '../../src/plan/move-preflight.js';
import { plan } from '../../src/plan/planner.js';
import { firstFreeSpan } from '../../src/plan/port-spans.js';
import { renderPlanJson, renderPlanText } from '../../src/plan/render.js';
import { annotatePlan, type ResolutionInputs } from '../../src/plan/resolution.js';
import type { Plan } from '../../src/plan/types.js';
import type { ClusterState } from '../../src/state/cluster-state.js';
import { appliedState, desired, mod } from '../support/plan-fixtures.js';

const opts = { applySet: 'default', prune: false };
const IMAGE = 'registry.test/ns8/webapp:1.0.0';
function url(id: string, node: number, image = IMAGE): ModuleObject {
  const m = mod(id, { image, node });
  delete m.spec.module;
  return m;
}

function facts(extra: Partial<MoveFacts> = {}): MoveFacts {
  return { knownNodes: [1, 2, 3], moduleFlags: new Map(), nodePorts: new Map(), coreVersion: '3.21.0', ...extra };
}

/** The plan of `objs` over `state`, annotated with labels for IMAGE and the move facts. */
function planned(objs: ModuleObject[], state: ClusterState, labels: Record<string, string>, moveFacts: MoveFacts | undefined = facts()): Plan {
  const d = desired(...objs);
  const inputs: ResolutionInputs = { imageLabels: new Map([[IMAGE, labels]]), moves: moveFacts };
  return annotatePlan(plan(d, state, opts), d, state, inputs);
}

/** A node ports hash with `ranges` held by other instances. */
const portsHash = (ranges: Record<string, string>): Record<string, string> => ranges;

describe('preflight of a move (a changed spec.node of an existing Module)', () => {
  const state = (): ClusterState => appliedState([url('webapp1', 1)]);

  it('allows a move the target can take: the update keeps its move record and nothing is blocked', () => {
    const p = planned([url('webapp1', 2)], state(), { 'org.nethserver.tcp-ports-demand': '2', 'org.nethserver.min-core': '3.0.0' });
    expect(p.blocked).toEqual([]);
    expect(p.changes.map((c) => `${c.action} ${c.key}`)).toEqual(['update Module/webapp1']);
    expect(movesOf(p)).toEqual([{ key: 'Module/webapp1', id: 'webapp1', from: 1, to: 2 }]);
  });

  it('refuses to move a rootfull image (label) with move_unsupported, naming the instance and both nodes, and drops the change', () => {
    const p = planned([url('webapp1', 2)], state(), { 'org.nethserver.rootfull': '1' });
    expect(p.changes).toEqual([]);
    expect(p.blocked).toEqual([
      {
        key: 'Module/webapp1',
        code: 'move_unsupported',
        message: expect.stringMatching(/^cannot move webapp1 from node 1 to node 2: webapp1 is rootfull \(its image has org\.nethserver\.rootfull=1\).*set spec\.node back to 1/),
      },
    ]);
    expect(p.summary).toEqual({ create: 0, update: 0, delete: 0 });
  });

  it('refuses to move an instance NS8 records as rootfull (module/<id>/flags) even when its labels are unknown', () => {
    const d = desired(url('webapp1', 2));
    const s = state();
    const p = annotatePlan(plan(d, s, opts), d, s, { moves: facts({ moduleFlags: new Map([['webapp1', ['rootfull']]]) }) });
    expect(p.blocked.map((b) => [b.code, b.message])).toEqual([['move_unsupported', expect.stringContaining('NS8 records it as rootfull (module/webapp1/flags)')]]);
  });

  it('warns that a move whose image labels are unknown was checked on the recorded facts only', () => {
    const d = desired(url('webapp1', 2));
    const s = state();
    const p = annotatePlan(plan(d, s, opts), d, s, { moves: facts() });
    expect(p.blocked).toEqual([]);
    expect(p.changes.map((c) => c.key)).toEqual(['Module/webapp1']);
    expect(p.warnings).toEqual([
      'Module/webapp1: move to node 2 checked without its image labels (not found): rootfull from module/webapp1/flags and the port demand from the ranges it holds on node 1; min-core not checked',
    ]);
    expect(planned([url('webapp1', 2)], s, {}).warnings).toEqual([]);
  });

  it('refuses a move to a node that does not exist with move_target_unknown', () => {
    const p = planned([url('webapp1', 7)], state(), {});
    expect(p.blocked).toEqual([{ key: 'Module/webapp1', code: 'move_target_unknown', message: expect.stringMatching(/^cannot move webapp1 from node 1 to node 7: node 7 is not a known node/) }]);
  });

  it('refuses a move when the image needs a newer core than the cluster runs (move_min_core_not_met), naming the limit and the core', () => {
    const p = planned([url('webapp1', 2)], state(), { 'org.nethserver.min-core': '3.30.0' });
    expect(p.blocked).toEqual([
      {
        key: 'Module/webapp1',
        code: 'move_min_core_not_met',
        message: expect.stringMatching(/^cannot move webapp1 from node 1 to node 2: its image needs core >= 3\.30\.0 \(org\.nethserver\.min-core\); core is 3\.21\.0 .*update the core first, or set spec\.node back to 1/),
      },
    ]);
  });

  it('refuses a move when the target has no gap for the TCP port demand (move_ports_exhausted), naming the demand, the node and the free count', () => {
    const nodePorts = new Map([[2, portsHash({ 'other1/tcp': '20000-44990' })]]);
    const p = planned([url('webapp1', 2)], state(), { 'org.nethserver.tcp-ports-demand': '20' }, facts({ nodePorts }));
    expect(p.blocked).toEqual([
      {
        key: 'Module/webapp1',
        code: 'move_ports_exhausted',
        message: expect.stringMatching(/^cannot move webapp1 from node 1 to node 2: it needs 20 TCP ports in a row \(org\.nethserver\.tcp-ports-demand\) and node 2 has no such gap left in 20000-45000 \(10 free in all, ns8ctl\/node\/2\/ports\)/),
      },
    ]);
    // Ten ports fit in that gap.
    expect(planned([url('webapp1', 2)], state(), { 'org.nethserver.tcp-ports-demand': '10' }, facts({ nodePorts })).blocked).toEqual([]);
  });

  it('checks UDP ports too, and without a demand label takes the size of the range the instance holds on its source node', () => {
    const nodePorts = new Map([
      [1, portsHash({ 'webapp1/udp': '20000-20004' })],
      [2, portsHash({ 'other1/udp': '20000-44998' })],
    ]);
    const p = planned([url('webapp1', 2)], state(), {}, facts({ nodePorts }));
    expect(p.blocked.map((b) => [b.code, b.message])).toEqual([['move_ports_exhausted', expect.stringContaining('it needs 5 UDP ports in a row (the range it holds on node 1)')]]);
  });

  it('counts the ports of other instances moving to the same node in the same plan: the second one that does not fit is refused', () => {
    const s = appliedState([url('webapp1', 1), url('webapp2', 1)]);
    const nodePorts = new Map([[2, portsHash({ 'other1/tcp': '20000-44990' })]]);
    const p = planned([url('webapp1', 2), url('webapp2', 2)], s, { 'org.nethserver.tcp-ports-demand': '6' }, facts({ nodePorts }));
    expect(p.changes.map((c) => c.key)).toEqual(['Module/webapp1']);
    expect(p.blocked.map((b) => `${b.key} ${b.code}`)).toEqual(['Module/webapp2 move_ports_exhausted']);
  });

  it('counts a range the instance already holds on the target (left by a cancelled move) as its own', () => {
    const nodePorts = new Map([[2, portsHash({ 'webapp1/tcp': '20000-20009', 'other1/tcp': '20010-45000' })]]);
    expect(planned([url('webapp1', 2)], state(), { 'org.nethserver.tcp-ports-demand': '10' }, facts({ nodePorts })).blocked).toEqual([]);
  });

  it('refuses a move over max-per-node on the target, counting instances moving there in the same plan, with the way back', () => {
    const s = appliedState([url('webapp1', 1), url('webapp2', 3), url('webapp3', 2)]);
    const labels = { 'org.nethserver.max-per-node': '2' };
    // webapp1 is admitted first (instance order): node 2 then holds webapp3 and webapp1.
    const p = planned([url('webapp1', 2), url('webapp2', 2), url('webapp3', 2)], s, labels);
    expect(p.blocked).toEqual([
      {
        key: 'Module/webapp2',
        code: 'max_per_node_exceeded',
        message: expect.stringMatching(/^cannot move webapp2 from node 3 to node 2: webapp2: module webapp allows at most 2 instances per node .*node 2 already has webapp1, webapp3; place it on another node, or set spec\.node back to 3 to keep it there$/),
      },
    ]);
    expect(p.changes.map((c) => c.key)).toEqual(['Module/webapp1']);
  });

  it('lets a refused move keep its place: it does not take the target slot another move needs for max-per-node', () => {
    const s = appliedState([url('webapp1', 1), url('webapp2', 3)]);
    const labels = { 'org.nethserver.max-per-node': '1' };
    // webapp1 (recorded rootfull) is refused, so webapp2 may take node 2's only slot.
    const p = planned([url('webapp1', 2), url('webapp2', 2)], s, labels, facts({ moduleFlags: new Map([['webapp1', ['rootfull']]]) }));
    expect(p.blocked.map((b) => `${b.key} ${b.code}`)).toEqual(['Module/webapp1 move_unsupported']);
    expect(p.changes.map((c) => c.key)).toEqual(['Module/webapp2']);
  });

  it('shows the code in the text and JSON forms of the plan', () => {
    const p = planned([url('webapp1', 2)], state(), { 'org.nethserver.rootfull': '1' });
    expect(renderPlanText(p, { color: false })).toContain('! Module/webapp1 (blocked: move_unsupported)\n    # cannot move webapp1 from node 1 to node 2');
    expect((renderPlanJson(p) as { blocked: unknown[] }).blocked).toEqual([{ key: 'Module/webapp1', code: 'move_unsupported', message: expect.stringContaining('rootfull') }]);
  });

  it('does not check new Modules, unchanged ones, or a cancelled move', () => {
    const s = appliedState([url('webapp1', 2)]);
    s.moduleNode.set('webapp1', '1');
    s.moving.add('webapp1');
    // Back to node 1 (cancel), and a new instance on an image the preflight would refuse to move.
    const p = planned([url('webapp1', 1), url('webapp9', 2)], s, { 'org.nethserver.rootfull': '1' });
    expect(p.blocked).toEqual([]);
    expect(movesOf(p)).toEqual([]);
  });
});

describe('preflightMoves and firstFreeSpan', () => {
  it('skips moves already blocked', () => {
    const moves = [{ key: 'Module/webapp1', id: 'webapp1', from: 1, to: 9 }];
    expect(preflightMoves(moves, () => undefined, facts(), new Set(['Module/webapp1']))).toEqual([]);
    expect(preflightMoves(moves, () => undefined, facts()).map((b) => b.code)).toEqual(['move_target_unknown']);
  });

  it('places ports first-fit, in any order of used ranges, within the bounds', () => {
    expect(firstFreeSpan([], 3)).toEqual({ start: 20000, end: 20002 });
    expect(firstFreeSpan([{ start: 20005, end: 20010 }, { start: 20000, end: 20001 }], 3)).toEqual({ start: 20002, end: 20004 });
    expect(firstFreeSpan([{ start: 20005, end: 20010 }, { start: 20000, end: 20001 }], 4)).toEqual({ start: 20011, end: 20014 });
    expect(firstFreeSpan([{ start: 20000, end: 44999 }], 2)).toBeUndefined();
    expect(firstFreeSpan([{ start: 20000, end: 44999 }], 1)).toEqual({ start: 45000, end: 45000 });
  });
});
