/**
 * The configure-module schema copied out of an image in local container storage (real podman,
 * an image built offline FROM scratch), cached, and found in the cache once the image is gone.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { OfflineSchemaLookup } from '../../src/configuration/configuration-schema.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { withImageBuildLock } from '../support/image-build-lock.js';

const runner = new ProcessRunner();
const TAG = `localhost/ns8ctl-test/confschema-${process.pid}`;
const WITH = `${TAG}:1.0.0`;
const WITHOUT = `${TAG}:0.1.0`;
const SCHEMA = { type: 'object', properties: { greeting: { type: 'string' } }, additionalProperties: false };
let root: string;

async function build(image: string, withSchema: boolean): Promise<void> {
  const ctx = path.join(root, `ctx-${withSchema ? 'with' : 'without'}`);
  mkdirSync(path.join(ctx, 'imageroot', 'actions', 'configure-module'), { recursive: true });
  if (withSchema) writeFileSync(path.join(ctx, 'imageroot', 'actions', 'configure-module', 'validate-input.json'), JSON.stringify(SCHEMA));
  writeFileSync(path.join(ctx, 'imageroot', 'actions', 'configure-module', '20configure'), '#!/bin/sh\n');
  writeFileSync(path.join(ctx, 'Containerfile'), 'FROM scratch\nCOPY imageroot /imageroot\n');
  await withImageBuildLock(() => runner.run(['podman', 'build', '-q', '-t', image, ctx], { purpose: 'build a test image', timeoutMs: 300_000 }));
}

beforeAll(async () => {
  root = mkdtempSync(path.join(tmpdir(), 'ns8ctl-schema-img-'));
  await build(WITH, true);
  await build(WITHOUT, false);
}, 600_000);

afterAll(async () => {
  await withImageBuildLock(() => runner.run(['podman', 'rmi', '-f', WITH, WITHOUT], { allowFailure: true }));
  rmSync(root, { recursive: true, force: true });
});

describe('configure-module schema from a local image', () => {
  it('copies the schema out of a local image, caches it, and uses the cache once the image is gone', async () => {
    const cacheDir = path.join(root, 'cache');
    const lookup = new OfflineSchemaLookup({ runner, homeBase: path.join(root, 'home'), rootfullBase: path.join(root, 'var'), cacheDir });
    expect(await lookup.find({ id: 'confschema1', image: WITH })).toEqual({ schema: SCHEMA, origin: `image ${WITH} (local storage)` });
    expect(readdirSync(cacheDir)).toHaveLength(1);
    // No container is left behind.
    const ps = await runner.run(['podman', 'ps', '-a', '--format', '{{.Names}}']);
    expect(ps.stdout).not.toContain('ns8ctl-schema-');

    await withImageBuildLock(() => runner.run(['podman', 'rmi', '-f', WITH]));
    const cached = await lookup.find({ id: 'confschema1', image: WITH });
    expect(cached?.schema).toEqual(SCHEMA);
    expect(cached?.origin).toContain('(cache ');
  }, 120_000);

  it('finds no schema in an image without one, and none for an image that is neither local nor cached', async () => {
    const lookup = new OfflineSchemaLookup({ runner, cacheDir: path.join(root, 'cache2'), homeBase: path.join(root, 'home'), rootfullBase: path.join(root, 'var') });
    expect(await lookup.find({ id: 'confschema1', image: WITHOUT })).toBeUndefined();
    expect(await lookup.find({ id: 'confschema1', image: `${TAG}:9.9.9` })).toBeUndefined();
    expect(existsSync(path.join(root, 'cache2'))).toBe(true);
  }, 120_000);
});
