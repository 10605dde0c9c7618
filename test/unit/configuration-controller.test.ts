import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { TaskFailedError } from '../../src/agent/errors.js';
import { summarizeModule, findCondition, type ModuleFacts } from '../../src/controller/conditions.js';
import { configurationHash, describeTaskFailure, maskAgentText, parseConfigurationRecord } from '../../src/controller/configuration-reconciler.js';
import { OfflineSchemaLookup, type ConfigurationSchemaLookup } from '../../src/configuration/configuration-schema.js';
import { checkPlannedConfigurations } from '../../src/configuration/configuration-validation.js';
import type { CommandRunner } from '../../src/host/runner.js';
import type { DesiredObject, ModuleObject } from '../../src/manifest/types.js';
import { MASK } from '../../src/runtime/mask.js';
import type { Plan } from '../../src/plan/types.js';

const noCommands: CommandRunner = {
  history: [],
  run: (argv) => Promise.reject(new Error(`no command expected, got ${argv.join(' ')}`)),
};

function moduleObj(id: string, configuration?: Record<string, unknown>): DesiredObject<ModuleObject> {
  return {
    object: { apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: id }, spec: { image: 'ghcr.io/x/web:1.0.0', node: 1, ...(configuration ? { configuration } : {}) } },
    source: { file: 'm.yaml', doc: 0, line: 3, col: 1 },
  };
}

function planOf(...ids: string[]): Plan {
  return {
    applySet: 'default',
    prune: false,
    changes: ids.map((id) => ({ action: 'create' as const, key: `Module/${id}`, kind: 'Module' as const, id, reasons: [], patch: [], specChanged: true, bookkeeping: [], inventory: { add: 'default', remove: [] } })),
    blocked: [],
    summary: { create: ids.length, update: 0, delete: 0 },
    pruneRatio: { prune: 0, inventory: 0 },
    pruneCandidates: [],
  };
}

const schema = { type: 'object', additionalProperties: false, properties: { greeting: { type: 'string' } } };

describe('configuration hash and record', () => {
  it('gives equal hashes for equal content whatever the key order', () => {
    expect(configurationHash({ a: 1, b: { c: 2, d: 3 } })).toBe(configurationHash({ b: { d: 3, c: 2 }, a: 1 }));
    expect(configurationHash({ a: 1 })).not.toBe(configurationHash({ a: 2 }));
  });

  it('parses a missing or damaged record as empty', () => {
    expect(parseConfigurationRecord({})).toMatchObject({ appliedHash: '', appliedGeneration: 0, drift: [] });
    expect(parseConfigurationRecord({ drift: 'not json', appliedGeneration: '3' })).toMatchObject({ drift: [], appliedGeneration: 3 });
  });
});

describe('masking agent output', () => {
  it('replaces every secret value of the configuration, also JSON-escaped, and URL passwords', () => {
    const config = { admin_password: 'pa"ss', nested: { api_token: 'tok123' }, greeting: 'hi' };
    const text = 'bad input {"admin_password":"pa\\"ss"} pa"ss tok123 https://u:pw@host/ hi';
    const out = maskAgentText(text, config);
    expect(out).not.toMatch(/pa"ss|pa\\"ss|tok123|:pw@/);
    expect(out).toContain(MASK);
    expect(out).toContain(' hi');
  });

  it('describes a refused configure-module with its exit code and output, masked', () => {
    const err = new TaskFailedError({ agentId: 'module/web1', action: 'configure-module', taskId: 't1', status: 'validation-failed', exitCode: 10, output: '[{"field":"admin_password","value":"hunter2"}]', error: 'rejected hunter2\n' });
    const msg = describeTaskFailure(err, { admin_password: 'hunter2' });
    expect(msg).toContain('exit code 10');
    expect(msg).toContain('output: [{"field":"admin_password"');
    expect(msg).not.toContain('hunter2');
  });
});

describe('Module summary with configuration facts', () => {
  const base: ModuleFacts = {
    id: 'web1',
    generation: 2,
    revision: '',
    source: 'm.yaml',
    deleting: false,
    node: 1,
    agent: { id: 'web1', node: 1, observedGeneration: 2, conditions: [{ type: 'Ready', status: 'True', reason: 'Running', message: '' }], imageUrl: '', imageDigest: '', ports: {}, units: [], drift: [] } as unknown as ModuleFacts['agent'],
  };

  it('is Stalled with ConfigurationFailed when configure-module refused the configuration', () => {
    const s = summarizeModule({ ...base, configuration: { failed: 'exit code 10' } });
    expect(findCondition(s.conditions, 'Ready')).toMatchObject({ status: 'False', reason: 'ConfigurationFailed' });
    expect(findCondition(s.conditions, 'Stalled')).toMatchObject({ status: 'True', reason: 'ConfigurationFailed' });
    expect(findCondition(s.conditions, 'Reconciling')).toMatchObject({ status: 'False' });
  });

  it('is Reconciling (Configuring) while configure-module cannot run yet', () => {
    const s = summarizeModule({ ...base, configuration: { pending: 'no agent answered' } });
    expect(findCondition(s.conditions, 'Reconciling')).toMatchObject({ status: 'True', reason: 'Configuring' });
  });

  it('is Drifted with the field diff, but desired-state drift is reported first', () => {
    const s = summarizeModule({ ...base, configuration: { drift: ['~ /greeting: "a" -> "b"'] } });
    expect(findCondition(s.conditions, 'Drifted')).toMatchObject({ status: 'True', reason: 'ConfigurationDrift' });
    expect(findCondition(s.conditions, 'Drifted')?.message).toContain('~ /greeting: "a" -> "b"');
    expect(findCondition(s.conditions, 'Ready')).toMatchObject({ status: 'True' });
    const d = summarizeModule({ ...base, configuration: { drift: ['x'] }, desiredDrift: { source: 'default', message: 'changed outside' } });
    expect(findCondition(d.conditions, 'Drifted')).toMatchObject({ reason: 'DesiredStateDrift' });
  });
});

describe('plan-time configuration check', () => {
  const found: ConfigurationSchemaLookup = { find: () => Promise.resolve({ schema, origin: 'test schema' }) };
  const none: ConfigurationSchemaLookup = { find: () => Promise.resolve(undefined) };

  it('reports each problem with its pointer under /spec/configuration', async () => {
    const r = await checkPlannedConfigurations([moduleObj('web1', { greeting: 5, colour: 'red' })], planOf('web1'), { lookup: found });
    expect(r.diagnostics.map((d) => [d.pointer, d.message.split(' (')[0]])).toEqual([
      ['/spec/configuration/colour', 'field "colour" is not allowed; allowed: greeting'],
      ['/spec/configuration/greeting', 'must be string'],
    ]);
    expect(r.diagnostics[0]).toMatchObject({ file: 'm.yaml', line: 3, col: 1 });
  });

  it('checks only created or updated Modules that have a configuration', async () => {
    let asked = 0;
    const counting: ConfigurationSchemaLookup = { find: () => (asked++, Promise.resolve({ schema, origin: 'x' })) };
    const r = await checkPlannedConfigurations([moduleObj('web1', { greeting: 'ok' }), moduleObj('web2'), moduleObj('web3', { greeting: 1 })], planOf('web1', 'web2'), { lookup: counting });
    expect(r.diagnostics).toEqual([]);
    expect(asked).toBe(1);
  });

  it('warns when no schema can be found', async () => {
    const r = await checkPlannedConfigurations([moduleObj('web1', { greeting: 5 })], planOf('web1'), { lookup: none });
    expect(r.diagnostics).toEqual([]);
    expect(r.warnings).toEqual([expect.stringContaining('Module/web1: spec.configuration not validated at plan time')]);
  });
});

describe('offline schema lookup', () => {
  let root: string;
  beforeEach(() => {
    root = mkdtempSync(path.join(tmpdir(), 'ns8ctl-schema-unit-'));
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  function install(dir: string, content: string): void {
    mkdirSync(path.join(dir, 'actions', 'configure-module'), { recursive: true });
    writeFileSync(path.join(dir, 'actions', 'configure-module', 'validate-input.json'), content);
  }

  it('reads the install dir of a rootless or rootfull instance installed at the target image', async () => {
    install(path.join(root, 'home', 'web1', '.config'), JSON.stringify(schema));
    install(path.join(root, 'var', 'web2'), JSON.stringify({ type: 'object' }));
    const l = new OfflineSchemaLookup({ runner: noCommands, homeBase: path.join(root, 'home'), rootfullBase: path.join(root, 'var'), useLocalImages: false });
    expect(await l.find({ id: 'web1', image: 'x:1', installedImage: 'x:1' })).toEqual({ schema, origin: path.join(root, 'home', 'web1', '.config', 'actions', 'configure-module', 'validate-input.json') });
    expect((await l.find({ id: 'web2' }))?.schema).toEqual({ type: 'object' });
    // Another image is planned: the installed schema may not be its schema.
    expect(await l.find({ id: 'web1', image: 'x:2', installedImage: 'x:1' })).toBeUndefined();
  });

  it('fails with the file named when a schema is not JSON', async () => {
    install(path.join(root, 'var', 'web1'), '{nope');
    const l = new OfflineSchemaLookup({ runner: noCommands, homeBase: path.join(root, 'home'), rootfullBase: path.join(root, 'var'), useLocalImages: false });
    await expect(l.find({ id: 'web1' })).rejects.toMatchObject({ code: 'configuration_schema_unreadable', message: expect.stringContaining('validate-input.json') });
  });
});
