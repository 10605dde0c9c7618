/**
 * Declarative configuration with the example webapp module's own actions (examples/modules):
 * validated offline against its configure-module schema, applied through a real agent, read back
 * with get-configuration, and drift found when the live configuration changes behind our back.
 */
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { runAgent, type AgentHandle } from '../../src/agent/agent.js';
import { validateConfiguration } from '../../src/configuration/configuration.js';
import { applyConfiguration, checkConfigurationDrift, readConfiguration } from '../../src/agent/configuration-tasks.js';
import { readConfigureModuleSchema } from '../../src/configuration/configuration-schema.js';
import { TaskFailedError } from '../../src/agent/errors.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';

const IMAGEROOT = path.resolve('examples/modules/webapp/imageroot');
let server: TestRedis;
let admin: Redis;
let root: string;
let agent: AgentHandle;

beforeAll(async () => {
  server = await startRedis();
  admin = server.client();
  root = mkdtempSync(path.join(tmpdir(), 'agent-conf-'));
  cpSync(path.join(IMAGEROOT, 'actions'), path.join(root, 'actions'), { recursive: true });
  mkdirSync(path.join(root, 'state'));
  writeFileSync(path.join(root, 'state', 'environment'), 'MODULE_ID=webapp1\n');
  agent = runAgent({ agentId: 'module/webapp1', installDir: root, stateDir: path.join(root, 'state'), actionsDirs: [path.join(root, 'actions')], pollSeconds: 1, log: () => undefined }, { redis: server.client(), runner: new ProcessRunner() });
  await agent.start();
});
afterAll(async () => {
  await agent.stop();
  await server.stop();
  rmSync(root, { recursive: true, force: true });
});

describe('declarative configuration of the example webapp', () => {
  it("validates spec.configuration offline against the image's configure-module schema", async () => {
    const schema = await readConfigureModuleSchema(IMAGEROOT);
    expect(schema).toBeDefined();
    expect(validateConfiguration({ greeting: 'Hi there' }, schema)).toEqual([]);
    expect(validateConfiguration({ greeting: 'no "quotes"', colour: 'red' }, schema, { basePointer: '/spec/configuration' })).toEqual([
      { pointer: '/spec/configuration/colour', message: 'field "colour" is not allowed; allowed: greeting' },
      { pointer: '/spec/configuration/greeting', message: 'must match the pattern ^[A-Za-z0-9 ,.!?-]{1,80}$ (got "no \\"quotes\\"")' },
    ]);
    expect(await readConfigureModuleSchema(path.join(root, 'nowhere'))).toBeUndefined();
  });

  it('runs configure-module, then get-configuration returns the same: no drift', async () => {
    await applyConfiguration(admin, 'webapp1', { greeting: 'Hello declarative world' });
    expect(await readConfiguration(admin, 'webapp1')).toEqual({ greeting: 'Hello declarative world' });
    expect(await checkConfigurationDrift(admin, 'webapp1', { greeting: 'Hello declarative world' })).toEqual({ equal: true, changes: [] });
  });

  it('reports drift as a field diff when the live configuration was changed by hand', async () => {
    await applyConfiguration(admin, 'webapp1', { greeting: 'Managed' });
    writeFileSync(path.join(root, 'state', 'public', 'greeting.txt'), 'Edited by hand\n');
    expect(await checkConfigurationDrift(admin, 'webapp1', { greeting: 'Managed' })).toEqual({
      equal: false,
      changes: [{ pointer: '/greeting', kind: 'changed', desired: 'Managed', actual: 'Edited by hand' }],
    });
  });

  it('rejects a configuration the action refuses, keeping its exit code and NS8 validation output', async () => {
    const err = await applyConfiguration(admin, 'webapp1', { greeting: 'x', unknown: 1 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TaskFailedError);
    expect((err as TaskFailedError).exitCode).toBe(10);
    expect(JSON.parse((err as TaskFailedError).output)).toEqual([{ parameter: 'unknown', error: 'unknown_additional_property_not_allowed', value: 1, field: 'unknown' }]);
  });
});
