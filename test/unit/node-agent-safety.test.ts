import { judgeDesiredState, parseEpoch, type GuardInput } from '../../src/node-agent/desired-state-guard.js';
import { decideInstance } from '../../src/node-agent/instance-decision.js';
import { describeRequest, parseDeletionMark } from '../../src/node-agent/removal-request.js';
import type { InstanceDesired, InstanceRecord } from '../../src/node-agent/types.js';

const desired = (over: Partial<InstanceDesired> = {}): InstanceDesired => ({ id: 'webapp1', generation: 1, spec: { node: 1, image: 'r/webapp:1' }, uuid: '', finalizers: ['node-agent'], ...over });
const record = (over: Partial<InstanceRecord> = {}): InstanceRecord => ({ id: 'webapp1', imageUrl: 'r/webapp:1', node: 1, ...over });

describe('what the node agent does with an instance', () => {
  test('a recorded instance without a desired object is an orphan, never a removal', () => {
    expect(decideInstance(undefined, record(), undefined)).toEqual({ action: 'orphaned' });
  });

  test('a deletion mark removes, with its who/when/why, even when the instance is suspended', () => {
    const mark = { removalPolicy: 'Delete' as const, by: 'alice', at: '2026-12-05T06:00:00.000Z', why: 'gone' };
    expect(decideInstance(desired({ deleting: mark, spec: { node: 1, image: 'x', suspend: true } }), record(), undefined)).toEqual({ action: 'remove', mark, origin: 'deletion-mark' });
  });

  test('a removal recorded on the host resumes without a desired object', () => {
    expect(decideInstance(undefined, record({ removing: { removalPolicy: 'Preserve', by: 'bob' } }), undefined)).toEqual({ action: 'remove', mark: { removalPolicy: 'Preserve', by: 'bob' }, origin: 'host-record' });
  });

  test("an orphan's removal request removes it; a request for an instance with a desired object is ignored", () => {
    const req = { removalPolicy: 'Preserve' as const, by: 'carol', at: '2026-12-05T06:00:00.000Z', why: 'x' };
    expect(decideInstance(undefined, record(), req)).toEqual({ action: 'remove', mark: req, origin: 'removal-request' });
    expect(decideInstance(desired(), record(), req)).toEqual({ action: 'converge' });
  });

  test('suspended, converged, or nothing to do', () => {
    expect(decideInstance(desired({ spec: { node: 1, image: 'x', suspend: true } }), record(), undefined)).toEqual({ action: 'suspended' });
    expect(decideInstance(desired(), undefined, undefined)).toEqual({ action: 'converge' });
    expect(decideInstance(undefined, undefined, undefined)).toEqual({ action: 'nothing' });
  });
});

describe('deletion marks', () => {
  test('the older {removalPolicy} form and the full form are both read; anything else is not a mark', () => {
    expect(parseDeletionMark('{"removalPolicy":"Delete"}')).toEqual({ removalPolicy: 'Delete' });
    expect(parseDeletionMark('{"removalPolicy":"Preserve","by":"alice","at":"2026-12-05T06:00:00.000Z","why":"old"}')).toEqual({ removalPolicy: 'Preserve', by: 'alice', at: '2026-12-05T06:00:00.000Z', why: 'old' });
    expect(parseDeletionMark('{"removalPolicy":"Erase"}')).toEqual({ removalPolicy: 'Preserve' });
    expect(parseDeletionMark('not json')).toBeUndefined();
    expect(parseDeletionMark('[1]')).toBeUndefined();
  });

  test('the request is described with what is known', () => {
    expect(describeRequest({ removalPolicy: 'Preserve', by: 'alice', at: 'T', why: 'old' })).toBe('requested by alice at T: old');
    expect(describeRequest({ removalPolicy: 'Preserve' })).toBe('requested (no requester recorded)');
  });
});

describe('the wiped-state guard', () => {
  const epoch = { id: 'e1', created: '2026-12-05T05:00:00.000Z' };
  const base: GuardInput = { node: 1, epoch, host: { id: 'e1', at: 'T', how: 'adopted' }, desiredModules: 3, desiredHere: 1, records: 2 };

  test('the epoch it works under, with Modules in desired state: act', () => {
    expect(judgeDesiredState(base)).toEqual({ act: true });
  });

  test('a node without instance records adopts the current epoch, or creates one when it has Modules to create', () => {
    expect(judgeDesiredState({ ...base, records: 0, host: undefined })).toEqual({ act: true, adopt: epoch });
    expect(judgeDesiredState({ ...base, records: 0, host: { id: 'old', at: 'T', how: 'adopted' } })).toEqual({ act: true, adopt: epoch });
    expect(judgeDesiredState({ ...base, records: 0, host: undefined, epoch: undefined })).toEqual({ act: true, createEpoch: true });
    expect(judgeDesiredState({ ...base, records: 0, host: undefined, epoch: undefined, desiredHere: 0 })).toEqual({ act: true });
  });

  test.each([
    ['EpochMissing', { epoch: undefined }],
    ['EpochInvalid', { epoch: 'invalid' as const }],
    ['EpochUnknown', { host: undefined }],
    ['EpochChanged', { epoch: { id: 'e2', created: 'T2' } }],
    ['DesiredStateEmpty', { desiredModules: 0, desiredHere: 0 }],
  ])('a host with instance records refuses: %s, saying how to confirm', (reason, over) => {
    const v = judgeDesiredState({ ...base, ...over });
    expect(v).toMatchObject({ act: false, reason });
    if (!v.act) expect(v.message).toContain('ns8ctl node-agent --node 1 --accept-desired-state');
  });

  test('an accepted empty desired state is acted on; the acceptance is dropped once Modules are back', () => {
    expect(judgeDesiredState({ ...base, desiredModules: 0, host: { id: 'e1', at: 'T', how: 'accepted', acceptEmpty: true } })).toEqual({ act: true });
    expect(judgeDesiredState({ ...base, host: { id: 'e1', at: 'T', how: 'accepted', acceptEmpty: true } })).toEqual({ act: true, clearAcceptEmpty: true });
  });

  test('the epoch key: absent, valid, or invalid', () => {
    expect(parseEpoch(null)).toBeUndefined();
    expect(parseEpoch('{"id":"e1","created":"T"}')).toEqual({ id: 'e1', created: 'T' });
    expect(parseEpoch('{"id":""}')).toBe('invalid');
    expect(parseEpoch('1')).toBe('invalid');
  });
});
