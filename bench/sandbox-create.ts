/**
 * Benchmark: `ns8ctl sandbox create` cold (root filesystem built from scratch) and warm (cached),
 * printed per phase and per node (each node's `podman run` and systemd boot, timed inside
 * create). Needs root, podman, debootstrap and the Debian mirror.
 *
 *   npm run build && node dist/bench/sandbox-create.js [--nodes 2] [--skip-cold]
 *
 * The cold run uses a temporary cache under /var/tmp (removed at the end), so it never touches
 * the real cache; the warm runs reuse it. Aim (issue 3): warm create of 2 nodes under 30 s.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createSandbox, type SandboxInfo } from '../src/sandbox/create.js';
import { deleteSandbox } from '../src/sandbox/delete.js';
import { defaultSandboxDeps } from '../src/sandbox/deps.js';

interface Row {
  run: string;
  nodes: number;
  totalS: number;
  rootfsS: number;
  bootS: number;
  deleteS: number;
  /** Per node, as measured inside create: `podman run`, then systemd until `running`. */
  perNode: SandboxInfo['timings']['nodes'];
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function once(run: string, nodes: number, env: NodeJS.ProcessEnv): Promise<Row> {
  const deps = defaultSandboxDeps({ env, stderr: (t) => void process.stderr.write(`  ${t}`), stdout: () => undefined });
  const name = 'bench-create';
  await deleteSandbox({ name }, deps);
  process.stderr.write(`${run}: creating a ${nodes}-node sandbox\n`);
  const info: SandboxInfo = await createSandbox({ name, nodes }, deps);
  const t = Date.now();
  await deleteSandbox({ name }, deps);
  return { run, nodes, totalS: info.timings.totalS, rootfsS: info.timings.rootfsS, bootS: info.timings.bootS, deleteS: (Date.now() - t) / 1000, perNode: info.timings.nodes };
}

const nodes = Number(arg('--nodes') ?? 2);
const rows: Row[] = [];
const cache = mkdtempSync('/var/tmp/ns8ctl-bench-cache-');
const env = { ...process.env, NS8CTL_SANDBOX_CACHE: process.argv.includes('--skip-cold') ? (process.env.NS8CTL_SANDBOX_CACHE ?? '/var/cache/ns8ctl/sandbox') : cache };
try {
  if (!process.argv.includes('--skip-cold')) rows.push(await once('cold', nodes, env));
  rows.push(await once('warm', 1, env));
  rows.push(await once('warm', nodes, env));
} finally {
  rmSync(cache, { recursive: true, force: true });
}

const fmt = (n: number): string => n.toFixed(1).padStart(7);
console.log('\nsandbox create (seconds; rootfs = root filesystem build, boot = network + registry + nodes + Redis)');
console.log('run    nodes   total  rootfs    boot  delete');
for (const r of rows) {
  console.log(`${r.run.padEnd(6)} ${String(r.nodes).padStart(5)} ${fmt(r.totalS)} ${fmt(r.rootfsS)} ${fmt(r.bootS)} ${fmt(r.deleteS)}`);
}
console.log('\nper node (seconds; nodes start one after another and boot in parallel: boot = podman run + systemd)');
console.log('run    nodes  node  podman run  systemd    boot');
for (const r of rows) {
  for (const n of r.perNode) console.log(`${r.run.padEnd(6)} ${String(r.nodes).padStart(5)} ${String(n.id).padStart(5)} ${fmt(n.runS).padStart(11)} ${fmt(n.systemdS).padStart(8)} ${fmt(n.bootS)}`);
}
const warm = rows.find((r) => r.run === 'warm' && r.nodes === nodes);
if (warm) console.log(`\nwarm create of ${nodes} nodes: ${warm.totalS.toFixed(1)} s (aim: under 30 s for 2 nodes) -> ${warm.totalS < 30 ? 'met' : 'NOT met'}`);
