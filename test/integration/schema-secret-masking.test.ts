/**
 * Values a module's configure-module schema marks secret (`format: password`) are masked in plans
 * (diff text and `-o json`) and in `get -o json|yaml`, even when their names look harmless: real
 * redis-server, the CLI in-process, the schema provided offline through ns8ctl's schema cache.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { MASK } from '../../src/runtime/mask.js';
import { schemaCacheFile } from '../../src/configuration/configuration-schema.js';
import { runCli } from '../support/cli.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';

const IMAGE = '127.0.0.1:9/ns8ctl-test/pinapp:1.0.0';
const PIN = '4711-pin-value';
const CODE = 'unlock-code-value';
const SCHEMA = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  type: 'object',
  properties: {
    pin: { type: 'string', format: 'password' },
    unlock: { type: 'object', properties: { code: { type: 'string', writeOnly: true } } },
    title: { type: 'string' },
  },
};

const node = `apiVersion: ns8ctl.nethserver.org/v1
kind: Node
metadata: {name: node1}
spec: {id: 1}
`;
const moduleDoc = (pin: string, title: string): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata: {name: pinapp1}
spec:
  image: ${IMAGE}
  node: 1
  configuration:
    pin: "${pin}"
    unlock: {code: "${CODE}"}
    title: "${title}"
`;

let srv: TestRedis;
let dir: string;
let env: NodeJS.ProcessEnv;
let savedStateDir: string | undefined;

function manifests(...docs: string[]): string {
  const m = path.join(dir, 'm');
  rmSync(m, { recursive: true, force: true });
  mkdirSync(m, { recursive: true });
  docs.forEach((d, i) => writeFileSync(path.join(m, `doc${i}.yaml`), d));
  return m;
}

beforeAll(async () => {
  srv = await startRedis();
  dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-schema-secrets-'));
  const stateDir = path.join(dir, '.state');
  // The production lookup reads the schema cache under the state dir of this process's environment.
  savedStateDir = process.env.NS8CTL_STATE_DIR;
  process.env.NS8CTL_STATE_DIR = stateDir;
  env = { NS8CTL_REDIS_URL: srv.url, NS8CTL_STATE_DIR: stateDir, NS8CTL_CORE_VERSION: '3.21.0' };
  const cacheDir = path.join(stateDir, 'cache', 'configuration-schemas');
  mkdirSync(cacheDir, { recursive: true });
  writeFileSync(schemaCacheFile(cacheDir, IMAGE), JSON.stringify({ image: IMAGE, schema: SCHEMA }));
});
afterAll(async () => {
  if (savedStateDir === undefined) delete process.env.NS8CTL_STATE_DIR;
  else process.env.NS8CTL_STATE_DIR = savedStateDir;
  await srv.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('values a configure-module schema marks secret', () => {
  it('are masked in diff text and -o json of a create, and other values are shown', async () => {
    const m = manifests(node, moduleDoc(PIN, 'hello'));
    const text = await runCli(['diff', '-f', m], env);
    expect(text.code).toBe(1);
    expect(text.stdout).toContain(`+ spec.configuration.pin: ${MASK}\n`);
    expect(text.stdout).toContain(`+ spec.configuration.unlock.code: ${MASK}\n`);
    expect(text.stdout).toContain('+ spec.configuration.title: "hello"');
    const json = await runCli(['diff', '-f', m, '-o', 'json'], env);
    expect(json.code).toBe(1);
    for (const out of [text, json]) {
      expect(out.stdout + out.stderr).not.toContain(PIN);
      expect(out.stdout + out.stderr).not.toContain(CODE);
    }
    const change = (JSON.parse(json.stdout) as { changes: { key: string; after: { spec: { configuration: Record<string, unknown> } }; patch: { path: string; value: unknown }[] }[] }).changes.find((c) => c.key === 'Module/pinapp1')!;
    expect(change.after.spec.configuration).toEqual({ pin: MASK, unlock: { code: MASK }, title: 'hello' });
  });

  it('are masked in the diff of an update (old and new value) and in get -o json and -o yaml', async () => {
    expect((await runCli(['apply', '-f', manifests(node, moduleDoc(PIN, 'hello'))], env)).code).toBe(0);
    const m = manifests(node, moduleDoc('9999-new-pin', 'hello'));
    const text = await runCli(['diff', '-f', m], env);
    expect(text.code).toBe(1);
    expect(text.stdout).toContain(`~ spec.configuration.pin: ${MASK} -> ${MASK}\n`);
    const json = await runCli(['diff', '-f', m, '-o', 'json'], env);
    for (const out of [text, json]) {
      expect(out.stdout).not.toContain(PIN);
      expect(out.stdout).not.toContain('9999-new-pin');
    }
    for (const format of ['json', 'yaml']) {
      const got = await runCli(['get', 'module', 'pinapp1', '-o', format], env);
      expect(got.code).toBe(0);
      expect(got.stdout).toContain(MASK);
      expect(got.stdout).toContain('hello');
      expect(got.stdout).not.toContain(PIN);
      expect(got.stdout).not.toContain(CODE);
    }
    const shown = await runCli(['get', 'module', 'pinapp1', '-o', 'json', '--show-secrets'], env);
    expect(shown.stdout).toContain(PIN);
  });
});
