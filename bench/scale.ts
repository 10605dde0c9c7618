/**
 * Scale run (issue 14): N instances of the example web app across a sandbox of real systemd nodes
 * (default 100 instances, 2 nodes), from one `ns8ctl apply` to every instance Ready. A node agent
 * runs continuously in each node (`ns8ctl node-agent --node K` as a transient unit). Prints and
 * reports (times from the moment `ns8ctl apply` starts in node 1): time from apply to all Ready, p50/p95 of each instance's apply -> Ready time, the peak
 * RSS of each node agent, and the commands the leader's Redis processed meanwhile; beside Flux's
 * published figure (flux-benchmark: 100 Kustomizations reconciled in 28 s on a 16-core runner).
 *
 * Needs root, podman, skopeo, docker-registry, debootstrap (the sandbox). Sizes:
 * BENCH_SCALE_INSTANCES (100), BENCH_SCALE_NODES (2), BENCH_SCALE_TIMEOUT_S (1800).
 * Run: `npm run build && node dist/bench/scale.js`. The sandbox `bench-scale` is deleted at the end.
 */
import { Redis } from 'ioredis';
import { ProcessRunner } from '../src/host/runner.js';
import { createSandbox } from '../src/sandbox/create.js';
import { deleteSandbox } from '../src/sandbox/delete.js';
import { defaultSandboxDeps } from '../src/sandbox/deps.js';
import { execInNode } from '../src/sandbox/lifecycle.js';
import { adminRedisUrl } from '../src/sandbox/node-config.js';
import { readAdminPassword } from '../src/sandbox/record.js';
import { keys } from '../src/state/keys.js';
import { ensureExampleImages } from '../test/support/example-images.js';
import { emitResult, type Figure } from './support/result.js';

const INSTANCES = Number(process.env.BENCH_SCALE_INSTANCES ?? 100);
const NODES = Number(process.env.BENCH_SCALE_NODES ?? 2);
const TIMEOUT_MS = Number(process.env.BENCH_SCALE_TIMEOUT_S ?? 1800) * 1000;
const NAME = 'bench-scale';
const AGENT_UNIT = 'ns8ctl-bench-agent';
/** flux-benchmark (fluxcd/flux-benchmark README): 100 Kustomizations on a 16-core GitHub runner. */
const FLUX_100_S = 28;

const runner = new ProcessRunner(50);
const deps = defaultSandboxDeps({ runner, stderr: (t) => process.stderr.write(t), stdout: () => undefined });

async function inNode(node: number, command: string[], input?: string): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const execStdio = input === undefined ? { mode: 'pipe' as const } : { mode: 'pipe' as const, stdin: input };
  const code = await execInNode({ name: NAME, node: String(node), command }, { ...deps, execStdio, stdout: (t) => void (out += t), stderr: (t) => void (err += t) });
  return { code, out, err };
}

async function must(node: number, command: string[], input?: string): Promise<string> {
  const r = await inNode(node, command, input);
  if (r.code !== 0) throw new Error(`node ${node}: ${command.join(' ')} exited ${r.code}: ${r.err || r.out}`);
  return r.out;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? 0;
}

/** Peak RSS (VmHWM, MiB) of a node's agent unit. */
async function agentPeakRss(node: number): Promise<number> {
  const pid = (await must(node, ['systemctl', 'show', '-p', 'MainPID', '--value', AGENT_UNIT])).trim();
  const status = await must(node, ['cat', `/proc/${pid}/status`]);
  const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return kb / 1024;
}

async function commandsProcessed(redis: Redis): Promise<number> {
  return Number(/total_commands_processed:(\d+)/.exec(await redis.info('stats'))?.[1] ?? 0);
}

async function main(): Promise<void> {
  await deleteSandbox({ name: NAME }, deps);
  const info = await createSandbox({ name: NAME, nodes: NODES }, deps);
  let leader: Redis | undefined;
  try {
    const images = await ensureExampleImages(info.registry);
    leader = new Redis(adminRedisUrl(info.addresses['1'] ?? '', await readAdminPassword(deps, NAME)), { maxRetriesPerRequest: 2 });
    const ids = Array.from({ length: INSTANCES }, (_, i) => `webapp${i + 1}`);
    const manifests = ids
      .map((id, i) => `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${id}\nspec:\n  image: ${images.webapp['1.0.0']}\n  node: ${(i % NODES) + 1}\n`)
      .join('---\n');
    await must(1, ['sh', '-c', 'mkdir -p /root/scale && cat > /root/scale/modules.yaml'], manifests);
    for (let n = 1; n <= NODES; n++) await must(n, ['systemd-run', `--unit=${AGENT_UNIT}`, '--collect', 'ns8ctl', 'node-agent', '--node', String(n)]);
    const commandsBefore = await commandsProcessed(leader);
    let ownCommands = 1; // the INFO that reads the count at the end
    const execStarted = Date.now();
    // The node prints the time its `ns8ctl apply` starts (the containers share the host's clock):
    // times are measured from there, as an operator running apply on the node sees them; the
    // `podman exec` that carries the command into the node (about 0.5 s here) is reported apart.
    const out = await must(1, ['sh', '-c', 'date +%s%N && exec ns8ctl apply -f /root/scale/']);
    const execReturned = Date.now();
    const started = Math.floor(Number(out.split('\n')[0]) / 1e6);
    if (!Number.isFinite(started) || started < execStarted - 1000 || started > execReturned) throw new Error(`scale: node 1 printed no usable start time: ${out.split('\n')[0]}`);
    const applied = execReturned - started;
    process.stderr.write(`scale: apply took ${(applied / 1000).toFixed(2)} s in node 1 (${((execReturned - execStarted) / 1000).toFixed(2)} s with podman exec)\n`);
    const readyAt = new Map<string, number>();
    let shown = -1;
    while (readyAt.size < ids.length) {
      if (Date.now() - started > TIMEOUT_MS) throw new Error(`${ids.length - readyAt.size} instance(s) not Ready after ${TIMEOUT_MS / 1000} s: ${ids.filter((id) => !readyAt.has(id)).slice(0, 5).join(', ')} ...`);
      // Only the instances not Ready yet are read; the bench's own reads are not counted below.
      const waiting = ids.filter((id) => !readyAt.has(id));
      const p = leader.pipeline();
      for (const id of waiting) p.hget(keys.moduleStatus(id), 'conditions');
      ownCommands += waiting.length;
      const now = Date.now();
      ((await p.exec()) ?? []).forEach(([, v], i) => {
        const id = waiting[i] as string;
        if (readyAt.has(id) || typeof v !== 'string') return;
        const ready = (JSON.parse(v) as { type: string; status: string }[]).some((c) => c.type === 'Ready' && c.status === 'True');
        if (ready) readyAt.set(id, now - started);
      });
      if (readyAt.size !== shown) process.stderr.write(`scale: ${(shown = readyAt.size)}/${ids.length} Ready after ${((now - started) / 1000).toFixed(1)} s\n`);
      // Few instances: a fine poll, so the figure is not rounded up by the poll (one pipeline per poll).
      if (readyAt.size < ids.length) await new Promise((r) => setTimeout(r, ids.length <= 10 ? 50 : 500));
    }
    const total = (Date.now() - started) / 1000;
    const commands = (await commandsProcessed(leader)) - commandsBefore - ownCommands;
    const times = [...readyAt.values()].sort((a, b) => a - b);
    const rss: number[] = [];
    for (let n = 1; n <= NODES; n++) rss.push(await agentPeakRss(n));
    const figures: Figure[] = [
      { what: `${INSTANCES} instances on ${NODES} nodes: apply -> all Ready`, value: total, unit: 's', ...(INSTANCES === 100 ? { versus: { what: 'Flux, 100 Kustomizations, 16 cores (flux-benchmark)', value: FLUX_100_S } } : {}) },
      { what: '`ns8ctl apply` in node 1 (until podman exec returned)', value: applied / 1000, unit: 's' },
      { what: '`podman exec` until the apply started in node 1 (not counted above)', value: (started - execStarted) / 1000, unit: 's' },
      { what: 'apply -> Ready per instance, p50', value: percentile(times, 50) / 1000, unit: 's' },
      { what: 'apply -> Ready per instance, p95', value: percentile(times, 95) / 1000, unit: 's' },
      { what: 'node agent peak RSS (largest node)', value: Math.max(...rss), unit: 'MiB' },
      { what: 'Redis commands on the leader, apply -> all Ready (the bench\'s own reads not counted)', value: commands, unit: 'commands' },
    ];
    console.log(`\nscale run: ${INSTANCES} instances, ${NODES} nodes (sandbox, 2-core host)`);
    for (const f of figures) console.log(`  ${f.what}: ${f.value.toFixed(f.unit === 'commands' ? 0 : 2)} ${f.unit}${f.versus ? ` (${f.versus.what}: ${f.versus.value} s)` : ''}`);
    emitResult({ bench: 'scale', sizes: { instances: INSTANCES, nodes: NODES }, figures });
  } finally {
    leader?.disconnect();
    if (!process.env.NS8CTL_KEEP_SANDBOX) {
      await deleteSandbox({ name: NAME }, deps).catch((err: unknown) => {
        console.error(`scale: sandbox ${NAME} was not deleted (delete it with ns8ctl sandbox delete --name ${NAME}): ${err instanceof Error ? err.message : String(err)}`);
        process.exitCode = 1;
      });
    }
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exitCode = 1;
});
