/**
 * Benchmark: `ns8ctl sandbox create` cold (root filesystem built from scratch) and warm (cached),
 * printed per phase and per node. Needs root, podman, debootstrap and the Debian mirror.
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
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function once(run: string, nodes: number, env: NodeJS.ProcessEnv): Promise<Row> {
  const deps = defaultSandboxDeps({ env, stderr: (t) => void process.stderr.write(`  ${t}`), stdout: () => undefined });
  const name = 'bench';
  await deleteSandbox({ name }, deps);
  process.stderr.write(`${run}: creating a ${nodes}-node sandbox\n`);
  const info: SandboxInfo = await createSandbox({ name, nodes }, deps);
  const t = Date.now();
  await deleteSandbox({ name }, deps);
  return { run, nodes, totalS: info.timings.totalS, rootfsS: info.timings.rootfsS, bootS: info.timings.bootS, deleteS: (Date.now() - t) / 1000 };
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
console.log('run    nodes   total  rootfs    boot  total/node  boot/node  delete');
for (const r of rows) {
  console.log(`${r.run.padEnd(6)} ${String(r.nodes).padStart(5)} ${fmt(r.totalS)} ${fmt(r.rootfsS)} ${fmt(r.bootS)} ${fmt(r.totalS / r.nodes).padStart(11)} ${fmt(r.bootS / r.nodes).padStart(10)} ${fmt(r.deleteS)}`);
}
const warm = rows.find((r) => r.run === 'warm' && r.nodes === nodes);
if (warm) console.log(`\nwarm create of ${nodes} nodes: ${warm.totalS.toFixed(1)} s (aim: under 30 s for 2 nodes) -> ${warm.totalS < 30 ? 'met' : 'NOT met'}`);
