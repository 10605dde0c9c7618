/**
 * Where podman keeps a user's images when nothing configures it otherwise (src/host/image-store.ts):
 * the module agent reads that storage's metadata instead of spawning podman, so any storage.conf
 * that may move the graphroot must make it defer to podman.
 */
import { afterAll, describe, expect, test } from '@jest/globals';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { defaultGraphroot } from '../../src/host/image-store.js';

const root = mkdtempSync(path.join(tmpdir(), 'ns8ctl-graphroot-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('defaultGraphroot', () => {
  const etc = path.join(root, 'etc-containers');
  mkdirSync(etc, { recursive: true });
  const home = path.join(root, 'home', 'web1');

  test("is ~/.local/share/containers/storage for a user, $XDG_DATA_HOME/containers/storage when set, and root's system storage", async () => {
    expect(await defaultGraphroot({ HOME: home }, false, etc)).toBe(path.join(home, '.local', 'share', 'containers', 'storage'));
    expect(await defaultGraphroot({ HOME: home, XDG_DATA_HOME: '/data' }, false, etc)).toBe('/data/containers/storage');
    expect(await defaultGraphroot({}, true, etc)).toBe('/var/lib/containers/storage');
  });

  test('is unknown when a storage.conf may choose another place, or without a HOME', async () => {
    expect(await defaultGraphroot({ HOME: home, CONTAINERS_STORAGE_CONF: '/x/storage.conf' }, false, etc)).toBeUndefined();
    expect(await defaultGraphroot({}, false, etc)).toBeUndefined();
    mkdirSync(path.join(home, '.config', 'containers'), { recursive: true });
    writeFileSync(path.join(home, '.config', 'containers', 'storage.conf'), '[storage]\ndriver = "overlay"\n');
    expect(await defaultGraphroot({ HOME: home }, false, etc)).toBeUndefined();
    const other = path.join(root, 'home', 'web2');
    writeFileSync(path.join(etc, 'storage.conf'), '[storage]\n  rootless_storage_path = "/srv/$USER"\n');
    expect(await defaultGraphroot({ HOME: other }, false, etc)).toBeUndefined();
    writeFileSync(path.join(etc, 'storage.conf'), '[storage]\ngraphroot = "/srv/containers"\n');
    expect(await defaultGraphroot({}, true, etc)).toBeUndefined();
    writeFileSync(path.join(etc, 'storage.conf'), '[storage]\ndriver = "overlay"\n# graphroot = "/elsewhere"\n');
    expect(await defaultGraphroot({ HOME: other }, false, etc)).toBe(path.join(other, '.local', 'share', 'containers', 'storage'));
  });
});
