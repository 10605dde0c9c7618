/**
 * Setup shared by the host-level tests of examples/ns8-compat/: the images built under a test
 * registry name, and a temp root with NS8's agent runtime installed and a `systemctl` on PATH
 * (fakebin/) that records its arguments in `<root>/systemctl.log` (the host has no systemd).
 */
import { chmodSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { installNs8Runtime, ns8RuntimeLayout } from '../../src/agent/ns8-runtime.js';
import { ExecaRunner } from '../../src/host/runner.js';

export async function prepareCompatHost(opts: { only: string; registry: string; prefix: string; timeoutMs?: number }): Promise<string> {
  const build = [path.resolve('examples/modules/build-images.sh'), '--dir', path.resolve('examples/ns8-compat'), '--namespace', 'ns8ctl-compat', '--only', opts.only, '--registry', opts.registry];
  await new ExecaRunner().run(build, { timeoutMs: opts.timeoutMs ?? 300_000 });
  const root = mkdtempSync(path.join(tmpdir(), opts.prefix));
  const version = (await execa('/usr/bin/python3', ['-c', 'import sys; print("%d.%d" % sys.version_info[:2])'])).stdout.trim();
  const nodeRoot = path.join(root, 'node');
  await installNs8Runtime(nodeRoot, ns8RuntimeLayout({ runtimeDir: path.resolve('runtime/ns8'), pythonVersion: version, installRoot: nodeRoot }));
  mkdirSync(path.join(root, 'fakebin'));
  writeFileSync(path.join(root, 'fakebin', 'systemctl'), `#!/bin/sh\necho "$*" >> ${root}/systemctl.log\n`);
  chmodSync(path.join(root, 'fakebin', 'systemctl'), 0o755);
  return root;
}
