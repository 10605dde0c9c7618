/**
 * Pure parts of `npm run demo`: which manifests it writes (the repository's `manifests/`, adjusted
 * to a sandbox), which example images it needs, how far an instance is from Ready, and the text it
 * prints at the end. No I/O, no clock.
 */
import { UsageError } from '../errors.js';

/** What the demo was asked to do (from `node dist/src/demo/main.js [--down] [--name NAME]`). */
export interface DemoArgs {
  down: boolean;
  help: boolean;
  name: string;
}

/** Sandbox name the demo uses unless `--name` says otherwise. */
export const DEFAULT_DEMO_NAME = 'demo';

/** Manifests of `manifests/` the demo uses, and why the others are left out. */
export const DEMO_MANIFESTS = ['node-1.yaml', 'webapp1.yaml'] as const;
export const LEFT_OUT: Record<string, string> = {
  'dokuwiki1.yaml': 'needs the internet (the NS8 repositories and ghcr.io)',
  'repositories.yaml': 'names repositories on the internet',
};

/** Registry the repository's manifests name (a loopback registry of the tests). */
const SOURCE_REGISTRY = '127.0.0.1:5000';

/** The unit that runs `ns8ctl run` inside node 1. */
export const LOOP_UNIT = 'ns8ctl-demo';

/**
 * The loop's unit file (installed in node 1's /etc/systemd/system and enabled): a node that is
 * stopped and started again (`ns8ctl sandbox stop/start`, a host reboot) runs the loop again by
 * itself, like a real NS8 node runs its services after a reboot. `argv` holds no spaces.
 */
export function loopUnitFile(argv: readonly string[], stateDir: string): string {
  return [
    '[Unit]',
    'Description=ns8ctl demo: the continuous loop (controller and node agent of node 1)',
    'Wants=network-online.target redis-server.service',
    'After=network-online.target redis-server.service',
    '',
    '[Service]',
    `Environment=NS8CTL_STATE_DIR=${stateDir}`,
    `ExecStart=${argv.join(' ')}`,
    'Restart=on-failure',
    'RestartSec=5s',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

/**
 * Parses the demo's arguments. `--down` removes what the demo made; `--name` picks another
 * sandbox (tests). Throws a UsageError naming the allowed flags for anything else.
 */
export function parseDemoArgs(argv: readonly string[]): DemoArgs {
  const out: DemoArgs = { down: false, help: false, name: DEFAULT_DEMO_NAME };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--down') out.down = true;
    else if (a === '-h' || a === '--help') out.help = true;
    else if (a === '--name') {
      const v = argv[++i];
      if (v === undefined || v.startsWith('-')) throw new UsageError('--name needs a value (a sandbox name, e.g. --name demo)');
      out.name = v;
    } else if (a?.startsWith('--name=')) out.name = a.slice('--name='.length);
    else throw new UsageError(`unknown argument "${a ?? ''}"; allowed: --down, --name NAME, --help`);
  }
  return out;
}

/**
 * Adjusts one manifest of `manifests/` to a sandbox: images of the loopback test registry point
 * at the sandbox registry, and the Node's address becomes node 1's address on the sandbox network.
 * Comments and layout are kept, so the file the user edits reads like the original.
 */
export function adjustManifest(text: string, sandbox: { registry: string; nodeAddress: string }): string {
  const header = '# Written by `npm run demo` for its sandbox: edit and save, and the controller in node 1 applies it.\n';
  const body = text
    .split('\n')
    .map((line) => line.replace(/^(\s*image:\s*)127\.0\.0\.1:5000\//, `$1${sandbox.registry}/`).replace(/^(\s*address:\s*)127\.0\.0\.1\s*$/, `$1${sandbox.nodeAddress}`))
    .join('\n');
  return header + body;
}

/** True when `text` still names the loopback test registry (an adjustment would be missing). */
export function namesSourceRegistry(text: string): boolean {
  return text.includes(SOURCE_REGISTRY);
}

/**
 * Every image the example sources define, as `ns8ctl-examples/NAME:TAG` paths, from the
 * directory names `examples/modules/<name>/versions/<tag>/` (what build-images.sh builds).
 */
export function exampleImagePaths(versions: Record<string, readonly string[]>): string[] {
  return Object.entries(versions)
    .sort(([a], [b]) => a.localeCompare(b))
    .flatMap(([name, tags]) => [...tags].sort().map((tag) => `ns8ctl-examples/${name}:${tag}`));
}

/** One condition of a module status (`ns8ctl/status/module/<id>` field `conditions`). */
export interface Condition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
}

/** How far an instance is from Ready. */
export interface Readiness {
  ready: boolean;
  /** One line for the progress output: `Ready`, or the Ready condition's reason and message. */
  summary: string;
}

/** Reads an instance's readiness from its status hash (empty when the node agent has not written one). */
export function readinessOf(status: Record<string, string>): Readiness {
  let conditions: Condition[] = [];
  try {
    const parsed: unknown = JSON.parse(status.conditions ?? '[]');
    if (Array.isArray(parsed)) conditions = parsed as Condition[];
  } catch {
    // A half-written or foreign value reads as "no status yet".
  }
  const ready = conditions.find((c) => c.type === 'Ready');
  if (!ready) return { ready: false, summary: 'no status yet (the controller and node agent are starting)' };
  if (ready.status === 'True') return { ready: true, summary: 'Ready' };
  const why = [ready.reason, ready.message].filter((s) => s !== undefined && s !== '').join(': ');
  return { ready: false, summary: `not Ready${why ? ` (${why})` : ''}` };
}

/** The commands printed at the end of a demo run. */
export function nextSteps(p: { cli: string; name: string; manifestsDir: string; down: string }): string {
  return [
    'Next, try:',
    `  alias ns8ctl='${p.cli}'`,
    `  eval "$(sudo ${p.cli} sandbox env ${p.name})"     # points ns8ctl at the sandbox's Redis`,
    '  ns8ctl events -w                                    # watch the controller and node agent work',
    `  sudoedit ${p.manifestsDir}/webapp1.yaml   # e.g. image tag 1.0.0 -> 1.1.0 (2.0.0 needs 1.1.0 first)`,
    '  ns8ctl get modules -o wide                          # converged within seconds of the save',
    `  sudo ${p.cli} sandbox exec --name ${p.name} 1 -- journalctl -u ${LOOP_UNIT} -f   # the loop's log`,
    `  ${p.down}                          # removes everything the demo made`,
  ].join('\n') + '\n';
}
