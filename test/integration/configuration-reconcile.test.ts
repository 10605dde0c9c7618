/**
 * Declarative configuration end to end on the controller side, with a real redis-server and a
 * REAL module agent (runAgent) whose configure-module / get-configuration are small shell scripts
 * writing and reading a file: plan-time validation against the install dir's schema, apply
 * through the real pipeline, configure-module run once per configuration, drift found and healed.
 */
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { runAgent, type AgentHandle } from '../../src/agent/agent.js';
import { applyPlan, preparePlan } from '../../src/apply/pipeline.js';
import { findCondition } from '../../src/controller/conditions.js';
import { OfflineSchemaLookup } from '../../src/configuration/configuration-schema.js';
import { EventRecorder, readEvents } from '../../src/state/events.js';
import { reconcileModuleSummary, type ModuleReconcilerDeps } from '../../src/controller/module-reconciler.js';
import { ManifestError } from '../../src/errors.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { RedisDesiredSource } from '../../src/node-agent/desired-source.js';
import { keys } from '../../src/state/keys.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';

const ID = 'confdemo1';
const IMAGE = '127.0.0.1:1/ns8ctl-test/confdemo:1.0.0';

const SCHEMA = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  type: 'object',
  additionalProperties: false,
  required: ['greeting'],
  properties: {
    greeting: { type: 'string', pattern: '^[A-Za-z ]+$' },
    port: { type: 'integer', default: 8080 },
    admin_password: { type: 'string' },
  },
};

const manifest = (config: string): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Node
metadata:
  name: node1
spec:
  id: 1
---
apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata:
  name: ${ID}
spec:
  image: ${IMAGE}
  node: 1
  configuration:
${config}`;

let server: TestRedis;
let redis: Redis;
let root: string;
let installDir: string;
let agent: AgentHandle;
let clock = Date.parse('2025-05-01T10:00:00Z');
const lookup = (): OfflineSchemaLookup => new OfflineSchemaLookup({ runner: new ProcessRunner(), homeBase: path.join(root, 'home'), rootfullBase: path.join(root, 'var'), useLocalImages: false });

function script(file: string, body: string): void {
  writeFileSync(file, `#!/bin/sh\n${body}\n`);
  chmodSync(file, 0o755);
}

const configureCount = (): number => {
  try {
    return readFileSync(path.join(installDir, 'state', 'configure.count'), 'utf8').split('\n').filter(Boolean).length;
  } catch {
    return 0;
  }
};

async function apply(file: string): Promise<void> {
  const prepared = await preparePlan([file], redis, { applySet: 'default', prune: false, configuration: lookup() });
  await applyPlan(prepared, redis, { applySet: 'default', prune: false, forcePrune: false, runner: new ProcessRunner() });
}

/** What the node agent would write once the instance runs the stored generation. */
async function agentReady(): Promise<void> {
  const generation = await redis.hget(keys.desired('Module', ID), 'generation');
  await redis.hset(keys.moduleStatus(ID), {
    node: '1',
    observedGeneration: generation ?? '0',
    imageUrl: IMAGE,
    conditions: JSON.stringify([
      { type: 'Ready', status: 'True', reason: 'Running', message: 'running' },
      { type: 'Degraded', status: 'False', reason: 'Running', message: '' },
    ]),
  });
}

function deps(selfHeal = false): ModuleReconcilerDeps {
  return {
    redis,
    events: new EventRecorder(redis, { now: () => new Date(clock) }),
    now: () => new Date(clock),
    configuration: { schemas: lookup(), selfHeal: () => selfHeal, driftCheckEveryMs: 60_000, taskTimeoutMs: 30_000, taskWaitMs: 30_000 },
  };
}

beforeAll(async () => {
  server = await startRedis();
  redis = server.client();
  root = mkdtempSync(path.join(tmpdir(), 'ns8ctl-conf-'));
  installDir = path.join(root, 'var', ID);
  for (const a of ['configure-module', 'get-configuration']) mkdirSync(path.join(installDir, 'actions', a), { recursive: true });
  mkdirSync(path.join(installDir, 'state'));
  writeFileSync(path.join(installDir, 'state', 'environment'), `MODULE_ID=${ID}\n`);
  writeFileSync(path.join(installDir, 'actions', 'configure-module', 'validate-input.json'), JSON.stringify(SCHEMA));
  // Steps run in the state dir. "fail" makes configure-module fail, leaking the password on stderr.
  script(
    path.join(installDir, 'actions', 'configure-module', '20configure'),
    'input=$(cat)\ncase "$input" in *Fail*) echo "cannot configure with $input" >&2; exit 3;; esac\nprintf "%s\\n" "$input" > config.json.tmp && mv config.json.tmp config.json\necho run >> configure.count',
  );
  script(path.join(installDir, 'actions', 'get-configuration', '20read'), 'cat config.json 2>/dev/null || echo "{}"');
  agent = runAgent(
    { agentId: `module/${ID}`, installDir, stateDir: path.join(installDir, 'state'), actionsDirs: [path.join(installDir, 'actions')], pollSeconds: 1, log: () => undefined },
    { redis: server.client(), runner: new ProcessRunner() },
  );
  await agent.start();
});

afterAll(async () => {
  await agent.stop();
  await server.stop();
  rmSync(root, { recursive: true, force: true });
});

describe('declarative configuration through the controller', () => {
  it('runs configure-module once for a configuration, and a second reconcile runs no task', async () => {
    const file = path.join(root, 'm.yaml');
    writeFileSync(file, manifest('    greeting: Hello world\n    admin_password: s3cr3t-pw\n'));
    await apply(file);
    await agentReady();
    const first = await reconcileModuleSummary(ID, deps());
    expect(findCondition(first?.conditions, 'Ready')).toMatchObject({ status: 'True', reason: 'Converged' });
    expect(configureCount()).toBe(1);
    expect(JSON.parse(readFileSync(path.join(installDir, 'state', 'config.json'), 'utf8'))).toEqual({ greeting: 'Hello world', admin_password: 's3cr3t-pw' });
    const tasks = (await redis.keys(`task/module/${ID}/*/exit_code`)).length;

    await reconcileModuleSummary(ID, deps());
    expect(configureCount()).toBe(1);
    expect((await redis.keys(`task/module/${ID}/*/exit_code`)).length).toBe(tasks);
    expect((await readEvents(redis)).filter((e) => e.name === 'module-configured')).toHaveLength(1);
    expect(await redis.hget(keys.moduleConfiguration(ID), 'appliedHash')).toMatch(/^[0-9a-f]{64}$/);
  });

  it('runs configure-module again when spec.configuration changes', async () => {
    const file = path.join(root, 'm.yaml');
    writeFileSync(file, manifest('    greeting: Changed greeting\n    admin_password: s3cr3t-pw\n'));
    await apply(file);
    // Not ready at the new generation yet: nothing runs.
    await reconcileModuleSummary(ID, deps());
    expect(configureCount()).toBe(1);
    await agentReady();
    await reconcileModuleSummary(ID, deps());
    expect(configureCount()).toBe(2);
    expect(JSON.parse(readFileSync(path.join(installDir, 'state', 'config.json'), 'utf8')).greeting).toBe('Changed greeting');
  });

  it('reports an edited live configuration as Drifted with the field diff (secrets masked), and heals it only with self-heal', async () => {
    writeFileSync(path.join(installDir, 'state', 'config.json'), JSON.stringify({ greeting: 'Edited by hand', admin_password: 'other-pw', port: 8080 }));
    clock += 120_000; // the drift check is due
    const s = await reconcileModuleSummary(ID, deps(false));
    const drifted = findCondition(s?.conditions, 'Drifted');
    expect(drifted).toMatchObject({ status: 'True', reason: 'ConfigurationDrift' });
    expect(drifted?.message).toContain('~ /greeting: "Edited by hand" -> "Changed greeting"');
    expect(drifted?.message).toContain('/admin_password');
    expect(drifted?.message).not.toMatch(/other-pw|s3cr3t-pw/);
    expect(configureCount()).toBe(2);
    const ev = (await readEvents(redis)).filter((e) => e.name === 'module-configuration-drifted');
    expect(ev).toHaveLength(1);
    expect(JSON.stringify(ev)).not.toMatch(/other-pw|s3cr3t-pw/);

    clock += 120_000;
    const healed = await reconcileModuleSummary(ID, deps(true));
    expect(configureCount()).toBe(3);
    expect(findCondition(healed?.conditions, 'Drifted')).toMatchObject({ status: 'False' });
    expect(JSON.parse(readFileSync(path.join(installDir, 'state', 'config.json'), 'utf8')).greeting).toBe('Changed greeting');
    expect((await readEvents(redis)).map((e) => e.name)).toContain('module-configuration-drift-corrected');
  });

  it('makes a configuration configure-module refuses Stalled with the masked agent output, and does not retry it', async () => {
    const file = path.join(root, 'm.yaml');
    writeFileSync(file, manifest('    greeting: Fail now\n    admin_password: s3cr3t-pw\n'));
    await apply(file);
    await agentReady();
    const s = await reconcileModuleSummary(ID, deps());
    expect(findCondition(s?.conditions, 'Stalled')).toMatchObject({ status: 'True', reason: 'ConfigurationFailed' });
    expect(findCondition(s?.conditions, 'Ready')).toMatchObject({ status: 'False', reason: 'ConfigurationFailed' });
    const msg = findCondition(s?.conditions, 'Stalled')?.message ?? '';
    expect(msg).toContain('exit code 3');
    expect(msg).toContain('cannot configure with');
    expect(msg).not.toContain('s3cr3t-pw');
    const tasks = (await redis.keys(`task/module/${ID}/*/exit_code`)).length;
    await reconcileModuleSummary(ID, deps());
    expect((await redis.keys(`task/module/${ID}/*/exit_code`)).length).toBe(tasks);
    expect(JSON.stringify(await readEvents(redis))).not.toContain('s3cr3t-pw');
  });

  it('rejects an invalid configuration at plan time with file:line:col and writes nothing', async () => {
    const before = await redis.hgetall(keys.desired('Module', ID));
    const file = path.join(root, 'bad.yaml');
    writeFileSync(file, manifest('    greeting: 42\n    colour: red\n'));
    const err = await preparePlan([file], redis, { applySet: 'default', prune: false, configuration: lookup() }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ManifestError);
    const ds = (err as ManifestError).diagnostics;
    expect(ds).toEqual([
      expect.objectContaining({ file, line: 16, col: 15, pointer: '/spec/configuration/greeting', message: expect.stringContaining('must be string') }),
      expect.objectContaining({ file, line: 17, col: 5, pointer: '/spec/configuration/colour', message: expect.stringContaining('field "colour" is not allowed; allowed: admin_password, greeting, port') }),
    ]);
    expect((err as ManifestError).message).toContain(`${file}:17:5  /spec/configuration/colour`);
    expect(await redis.hgetall(keys.desired('Module', ID))).toEqual(before);
  });

  it('configures an instance removed and added again with the same id and configuration again: the record goes with the instance', async () => {
    const file = path.join(root, 'm.yaml');
    writeFileSync(file, manifest('    greeting: Same again\n'));
    await apply(file);
    await agentReady();
    await reconcileModuleSummary(ID, deps());
    const before = configureCount();
    expect(await redis.hget(keys.moduleConfiguration(ID), 'appliedHash')).toMatch(/^[0-9a-f]{64}$/);
    // The node agent finishes the removal: it releases its finalizer on the deleting Module.
    await redis.hset(keys.desired('Module', ID), { deleting: '{"removalPolicy":"Delete"}', finalizers: 'node-agent' });
    await new RedisDesiredSource(redis).releaseFinalizer(ID);
    expect(await redis.exists(keys.desired('Module', ID), keys.moduleConfiguration(ID))).toBe(0);
    // Added again, unchanged manifest: a new instance, configured again.
    await apply(file);
    await agentReady();
    await reconcileModuleSummary(ID, deps());
    expect(configureCount()).toBe(before + 1);
  });

  it('never takes a record written for an earlier instance of the id (another MODULE_UUID) as applied', async () => {
    const before = configureCount();
    const uuid = await redis.hget(keys.moduleUuid(), ID);
    expect(await redis.hget(keys.moduleConfiguration(ID), 'instanceUuid')).toBe(uuid);
    // The id was re-created behind the controller's back (record kept, new uuid).
    await redis.hset(keys.moduleUuid(), ID, 'another-instance-uuid');
    await reconcileModuleSummary(ID, deps());
    expect(configureCount()).toBe(before + 1);
    expect(await redis.hget(keys.moduleConfiguration(ID), 'instanceUuid')).toBe('another-instance-uuid');
    // And now it is applied for this instance: no task.
    await reconcileModuleSummary(ID, deps());
    expect(configureCount()).toBe(before + 1);
  });

  it('warns, without failing, when no schema can be found offline', async () => {
    const file = path.join(root, 'other.yaml');
    writeFileSync(file, manifest('    greeting: Hello\n').replace(new RegExp(ID, 'g'), 'confdemo2'));
    const prepared = await preparePlan([file], redis, { applySet: 'other', prune: false, configuration: lookup() });
    expect(prepared.plan.warnings).toEqual([expect.stringMatching(/^Module\/confdemo2: spec\.configuration not validated at plan time: no configure-module schema found offline for 127\.0\.0\.1:1\/ns8ctl-test\/confdemo:1\.0\.0/)]);
  });
});
