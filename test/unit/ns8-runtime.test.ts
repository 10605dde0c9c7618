import { mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { installNs8Runtime, ns8RuntimeLayout, renderCoreEnv } from '../../src/agent/ns8-runtime.js';

describe('the NS8 runtime layout', () => {
  test('links pypkg, the helpers and runagent into runtime/ns8 and makes a pyenv whose .pth names the pypkg link', () => {
    const l = ns8RuntimeLayout({ runtimeDir: '/opt/app/runtime/ns8', pythonVersion: '3.11' });
    expect(l.symlinks).toEqual({
      'usr/local/agent/pyenv/bin/python3': '/usr/bin/python3',
      'usr/local/agent/pyenv/bin/python': '/usr/bin/python3',
      'usr/local/agent/pypkg': '/opt/app/runtime/ns8/pypkg',
      'usr/local/agent/bin': '/opt/app/runtime/ns8/agent-bin',
      'usr/local/bin/runagent': '/opt/app/runtime/ns8/bin/runagent',
    });
    expect(l.files['usr/local/agent/pyenv/lib/python3.11/site-packages/ns8-pypkg.pth']?.content).toBe('/usr/local/agent/pypkg\n');
    expect(l.files['usr/local/agent/pyenv/pyvenv.cfg']?.content).toBe('home = /usr/bin\ninclude-system-site-packages = true\nversion = 3.11\n');
    // Readable by instance users: rootless podman reads REGISTRY_AUTH_FILE (agent.env) on every pull.
    expect(l.files['etc/nethserver/registry.json']).toEqual({ content: '{"auths":{}}\n', mode: 0o644 });
  });

  test('refuses a python version that is not major.minor and a relative runtime dir', () => {
    expect(() => ns8RuntimeLayout({ runtimeDir: '/x', pythonVersion: '3' })).toThrow(/major\.minor/);
    expect(() => ns8RuntimeLayout({ runtimeDir: 'runtime/ns8', pythonVersion: '3.11' })).toThrow(/not an absolute path/);
  });

  test('core.env names every core image with the core version as tag', () => {
    const text = renderCoreEnv({ coreVersion: '3.21.0', repobase: 'registry.example/ns8' });
    expect(text.split('\n').filter(Boolean).map((l) => l.split('=')[0])).toEqual(['CORE_IMAGE', 'REDIS_IMAGE', 'RSYNC_IMAGE', 'RESTIC_IMAGE', 'RCLONE_IMAGE', 'SUPPORT_IMAGE', 'PROMTAIL_IMAGE', 'NODE_EXPORTER_IMAGE']);
    expect(text).toContain('RSYNC_IMAGE=registry.example/ns8/rsync:3.21.0\n');
    expect(() => renderCoreEnv({ repobase: 'a b' })).toThrow(/image prefix/);
  });

  test('installs files and links under a root, replacing what is there, and can run again', async () => {
    const root = mkdtempSync(path.join(tmpdir(), 'ns8-runtime-'));
    try {
      mkdirSync(path.join(root, 'usr/local/bin'), { recursive: true });
      symlinkSync('/old/target', path.join(root, 'usr/local/bin/runagent'));
      const layout = ns8RuntimeLayout({ runtimeDir: '/opt/app/runtime/ns8', pythonVersion: '3.11', installRoot: root });
      await installNs8Runtime(root, layout);
      await installNs8Runtime(root, layout);
      expect(readlinkSync(path.join(root, 'usr/local/bin/runagent'))).toBe('/opt/app/runtime/ns8/bin/runagent');
      expect(readFileSync(path.join(root, 'usr/local/agent/pyenv/lib/python3.11/site-packages/ns8-pypkg.pth'), 'utf8')).toBe(`${root}/usr/local/agent/pypkg\n`);
      expect(statSync(path.join(root, 'etc/nethserver/registry.json')).mode & 0o777).toBe(0o644);
      await expect(installNs8Runtime(root, { files: { '../escape': { content: '', mode: 0o644 } }, symlinks: {} })).rejects.toThrow(/outside/);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
