/**
 * Test harness: a real image registry (Debian's `docker-registry`) on a free loopback port with a
 * temporary storage directory. Plain HTTP: clients use `--tls-verify=false`. Fails (never skips)
 * when docker-registry is missing: CI installs it.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { registryProbeUrl, renderRegistryConfig } from '../../src/sandbox/registry-config.js';
import { freePort } from './redis-server.js';

/** A running registry; `address` is `127.0.0.1:PORT` (use it in image URLs). */
export interface TestRegistry {
  address: string;
  stop(): Promise<void>;
}

/** Starts `docker-registry serve` on 127.0.0.1:<free port> and waits until `/v2/` answers 200. */
export async function startRegistry(): Promise<TestRegistry> {
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  const dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-registry-'));
  const config = path.join(dir, 'config.yml');
  writeFileSync(config, renderRegistryConfig(address, path.join(dir, 'data')));
  const child = spawn('docker-registry', ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  let spawnError: Error | undefined;
  child.on('error', (e) => (spawnError = e));
  child.stderr?.on('data', (b: Buffer) => (stderr = (stderr + b.toString()).slice(-4000)));
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (spawnError) throw new Error(`docker-registry could not start (apt-get install docker-registry): ${spawnError.message}`);
    if (child.exitCode !== null) throw new Error(`docker-registry exited ${child.exitCode}: ${stderr}`);
    const ok = await fetch(registryProbeUrl(address)).then((r) => r.status === 200, () => false);
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`docker-registry did not answer on ${address}: ${stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    address,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
