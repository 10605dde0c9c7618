/**
 * The scaffolding of tests that bring up the demo (a one-node sandbox with the example images,
 * the manifests and the continuous loop) as a library: its deps, a temp demo dir, and the jest
 * hooks that start from no leftover demo and leave none behind.
 */
import { mkdtempSync, promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { defaultDemoDeps } from '../../src/demo/cli.js';
import { downDemo, type DemoDeps } from '../../src/demo/demo.js';
import { ProcessRunner } from '../../src/host/runner.js';

/** What {@link useDemoSandbox} gives a test file. */
export interface DemoSandbox {
  /** The runner behind `deps` (its `history` shows what the demo ran). */
  runner: ProcessRunner;
  /** `<tmp>/<prefix>XXXXXX/demo`, where the demo writes its manifests. */
  demoDir: string;
  /** The demo's deps: product defaults, output to `write`, 5 minutes for Ready. */
  deps: DemoDeps;
}

/**
 * Makes the demo's deps for sandbox `name` and registers the file's hooks: beforeAll takes down
 * a demo of that name left by an earlier run; afterAll takes it down again (unless
 * NS8CTL_KEEP_SANDBOX is set, to look at it; a failure there is ignored) and removes the temp dir.
 * Call it once, at the top level of a test file.
 */
export function useDemoSandbox(name: string, prefix: string, write: (text: string) => void): DemoSandbox {
  const runner = new ProcessRunner();
  const demoDir = path.join(mkdtempSync(path.join(tmpdir(), prefix)), 'demo');
  const deps: DemoDeps = defaultDemoDeps({ runner, demoDir, stdout: write, stderr: write, readyTimeoutMs: 300_000 });
  beforeAll(async () => {
    await downDemo({ name }, deps);
  }, 120_000);
  afterAll(async () => {
    if (!process.env.NS8CTL_KEEP_SANDBOX) await downDemo({ name }, deps).catch(() => undefined);
    await fsp.rm(path.dirname(demoDir), { recursive: true, force: true });
  }, 120_000);
  return { runner, demoDir, deps };
}
