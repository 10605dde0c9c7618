/**
 * The demo command (`node dist/src/demo/main.js [--down] [--name NAME]`): runs the demo or removes
 * it, and turns errors into short lines and an exit code (1 error, 2 usage).
 */
import { toNs8ctlError } from '../errors.js';
import { defaultSandboxDeps } from '../sandbox/deps.js';
import { DemoStepError, demoDirOf, downDemo, renderDown, runDemo, type DemoDeps } from './demo.js';
import { parseDemoArgs } from './plan.js';

const HELP = `npm run demo [-- --down] [-- --name NAME]

Runs ns8ctl for real on this machine (root, Debian 12, podman): a sandbox node, the example module
images, the manifests of manifests/ adjusted to the sandbox, and the continuous loop (ns8ctl run)
in the node; waits until the instances are Ready, then shows them. A second run changes nothing.
  --down       remove everything the demo made (sandbox, its images, the demo directory)
  --name NAME  sandbox name (default demo)
Docs: docs/demo.md
`;

/** Production dependencies of the demo. */
export function defaultDemoDeps(overrides: Partial<DemoDeps> = {}): DemoDeps {
  const base = defaultSandboxDeps();
  return { ...base, demoDir: demoDirOf(base.env), debianMarker: '/etc/debian_version', readyTimeoutMs: 600_000, ...overrides };
}

/** Runs the demo command for `argv`; returns the exit code. */
export async function demoMain(argv: string[], deps: DemoDeps = defaultDemoDeps()): Promise<number> {
  try {
    const args = parseDemoArgs(argv);
    if (args.help) {
      deps.stdout(HELP);
      return 0;
    }
    if (args.down) {
      deps.stdout(renderDown(args.name, await downDemo({ name: args.name }, deps), deps.env));
      return 0;
    }
    await runDemo({ name: args.name }, deps);
    return 0;
  } catch (err) {
    const e = toNs8ctlError(err);
    deps.stderr(`demo: ${e instanceof DemoStepError ? '' : 'error: '}${e.message}\n`);
    return e.exitCode;
  }
}
