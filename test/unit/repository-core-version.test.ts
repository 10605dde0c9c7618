import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_CORE_VERSION, readCoreVersion } from '../../src/repository/core-version.js';

describe('readCoreVersion', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'ns8ctl-core-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('prefers NS8CTL_CORE_VERSION', async () => {
    writeFileSync(join(dir, 'core.env'), 'CORE_IMAGE=ghcr.io/nethserver/core:3.3.1\n');
    await expect(readCoreVersion({ env: { NS8CTL_CORE_VERSION: ' 2.9.0 ' }, coreEnvFile: join(dir, 'core.env') })).resolves.toBe('2.9.0');
  });

  it('reads the CORE_IMAGE tag of an NS8 core.env', async () => {
    writeFileSync(join(dir, 'core.env'), 'REDIS_IMAGE=ghcr.io/nethserver/redis:3.3.1\nCORE_IMAGE=ghcr.io/nethserver/core:3.21.1-dev.3\n');
    await expect(readCoreVersion({ env: {}, coreEnvFile: join(dir, 'core.env') })).resolves.toBe('3.21.1-dev.3');
  });

  it('falls back to the NS8 version ns8ctl implements on a host without NS8', async () => {
    await expect(readCoreVersion({ env: {}, coreEnvFile: join(dir, 'missing.env') })).resolves.toBe(DEFAULT_CORE_VERSION);
  });
});
