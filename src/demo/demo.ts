/**
 * `npm run demo`: the real job of ns8ctl on one machine. A sandbox node (systemd in a Podman
 * container), the example module images in its registry, the repository's manifests adjusted to
 * it, and the continuous loop (`ns8ctl run`) as a unit in node 1; then it waits until every Module
 * is Ready and shows the result. Idempotent: a second run finds everything in place, changes
 * nothing and only shows the state. `downDemo` removes everything the demo made.
 */
import { appendFileSync, existsSync, mkdirSync, promises as fsp, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import { main as cliMain, processIO } from '../cli/main.js';
import { Ns8ctlError, RefusedError } from '../errors.js';
import { createSandbox } from '../sandbox/create.js';
import { removeSandbox } from '../sandbox/delete.js';
import type { SandboxDeps } from '../sandbox/deps.js';
import { leaderRedisUrlOf } from '../sandbox/env.js';
import { execInNode, startNode } from '../sandbox/lifecycle.js';
import { NODE_CONFIG_DIR, cacheRoot, sandboxPaths, validateSandboxName } from '../sandbox/naming.js';
import { listContainers } from '../sandbox/podman-sandbox.js';
import { requireTool } from '../sandbox/preflight.js';
import { pushImage } from '../sandbox/push.js';
import { readAdminPassword, readRecord, type SandboxRecord } from '../sandbox/record.js';
import { keys } from '../state/keys.js';
import { DEMO_MANIFESTS, LEFT_OUT, LOOP_UNIT, adjustManifest, loopUnitFile, exampleImagePaths, namesSourceRegistry, nextSteps, readinessOf } from './plan.js';

/** Number of steps a demo run prints (`demo [n/STEPS] ...`). */
const STEPS = 6;
/** Line the demo prints when a run found everything in place. */
export const NOTHING_CHANGED = 'nothing changed: the sandbox, the images, the manifests and the loop were already in place';

/** What the demo needs: the sandbox's dependencies plus where it keeps its own files. */
export interface DemoDeps extends SandboxDeps {
  /** The demo's own directory (log, link to the manifests): `NS8CTL_DEMO_DIR`, default /var/lib/ns8ctl/demo. */
  demoDir: string;
  /** File whose presence says "this is Debian" (default /etc/debian_version). */
  debianMarker: string;
  /** Longest wait for every Module to be Ready. */
  readyTimeoutMs: number;
}

export interface DemoOptions {
  /** Sandbox name (default `demo`). */
  name: string;
}

/** What a demo run did and saw (tests read it; main prints it as text). */
export interface DemoResult {
  name: string;
  /** One line per change made; empty when everything was in place. */
  changes: string[];
  /** Where the manifests the loop follows are, on this host (a link into node 1's config dir). */
  manifestsDir: string;
  /** HTTP answers of the Ready instances that have a TCP port. */
  http: { id: string; port: string; body: string }[];
  logFile: string;
}

/** The demo directory for an environment: `NS8CTL_DEMO_DIR` or /var/lib/ns8ctl/demo. */
export function demoDirOf(env: NodeJS.ProcessEnv): string {
  return path.resolve(env.NS8CTL_DEMO_DIR || '/var/lib/ns8ctl/demo');
}

/** Inside node 1, the manifests directory (node 1's config dir is bind-mounted read-only there). */
const NODE_MANIFESTS = `${NODE_CONFIG_DIR}/manifests`;

/** A step that failed: which one, what to do, and where the log is. */
export class DemoStepError extends Ns8ctlError {
  constructor(
    readonly step: number,
    title: string,
    fix: string,
    logFile: string,
    cause: unknown,
  ) {
    const why = cause instanceof Error ? cause.message : String(cause);
    super('demo_step_failed', `step ${step}/${STEPS} (${title}) failed: ${why}\n  what to do: ${fix}\n  log: ${logFile}`, { cause });
  }
}

/**
 * Checks the host before anything is touched: root (`demo_needs_root`), Debian
 * (`demo_host_unsupported`), podman (`tool_missing` with the apt-get line). Each error is one line.
 */
export async function checkDemoHost(deps: Pick<DemoDeps, 'uid' | 'debianMarker' | 'runner'>, what = 'demo'): Promise<void> {
  if (deps.uid !== undefined && deps.uid !== 0) {
    throw new RefusedError('demo_needs_root', `the ${what} must run as root (it runs a sandbox node: privileged Podman containers with systemd): sudo npm run ${what === 'demo' ? 'demo' : 'demo -- --down'}`);
  }
  if (!existsSync(deps.debianMarker)) {
    throw new Ns8ctlError('demo_host_unsupported', `the ${what} runs on Debian 12 (no ${deps.debianMarker} here): use a Debian 12 machine or container, or follow docs/sandbox.md by hand`);
  }
  await requireTool(deps, 'podman');
}

/** Progress and result output that also goes to the log file. */
class Output {
  constructor(
    private readonly deps: DemoDeps,
    readonly logFile: string,
  ) {}

  private log(text: string): void {
    try {
      appendFileSync(this.logFile, text);
    } catch {
      // The log is a convenience: a full disk must not hide the demo's own output.
    }
  }

  progress(text: string): void {
    this.deps.stderr(text);
    this.log(text);
  }

  result(text: string): void {
    this.deps.stdout(text);
    this.log(text);
  }
}

interface Ctx {
  deps: DemoDeps;
  name: string;
  out: Output;
  changes: string[];
}

async function runStep<T>(ctx: Ctx, n: number, title: string, fix: string, work: () => Promise<T>, tick = true): Promise<T> {
  ctx.out.progress(`demo [${n}/${STEPS}] ${title}\n`);
  const started = ctx.deps.now();
  // Long steps (a cold root filesystem, the image build) say they are alive.
  const ticker = setInterval(() => tick && ctx.out.progress(`  still at step ${n}/${STEPS}... ${Math.round((ctx.deps.now() - started) / 1000)} s\n`), 15_000);
  ticker.unref();
  try {
    return await work();
  } catch (err) {
    ctx.out.progress(`${(err as Error).stack ?? String(err)}\n`);
    const recent = ctx.deps.runner.history.slice(-8);
    for (const r of recent) ctx.out.progress(`  ran: ${r.argv.join(' ')} -> exit ${String(r.exitCode)}${r.stderr.trim() ? `: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}\n`);
    throw new DemoStepError(n, title, fix, ctx.out.logFile, err);
  } finally {
    clearInterval(ticker);
  }
}

/** Runs a command in node 1 and captures its output; never throws on exit codes. */
async function inNode(ctx: Ctx, command: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await execInNode({ name: ctx.name, node: '1', command }, { ...ctx.deps, execStdio: { mode: 'pipe' }, stdout: (t) => void (out += t), stderr: (t) => void (err += t) });
  return { code, out, err };
}

/** Step 1: reuses the sandbox when it is complete (starting what is stopped), else creates it. */
async function ensureSandbox(ctx: Ctx): Promise<SandboxRecord> {
  const { deps, name } = ctx;
  const containers = await listContainers(deps, name);
  const hasRecord = existsSync(sandboxPaths(deps.env, name).record);
  const node1 = containers.find((c) => c.role === 'node' && c.nodeId === 1);
  const registry = containers.find((c) => c.role === 'registry');
  if (hasRecord && node1 && registry) {
    if (registry.state !== 'running') {
      await deps.runner.run(['podman', 'start', registry.name], { purpose: `demo: start ${registry.name}`, mutating: true });
      ctx.changes.push(`started the stopped registry ${registry.name}`);
    }
    if (node1.state !== 'running') {
      await startNode({ name, node: '1' }, deps);
      ctx.changes.push(`started the stopped node ${node1.name}`);
    }
    const rec = await readRecord(deps, name);
    ctx.out.progress(`  reusing sandbox "${name}": node 1 at ${rec.addresses['1'] ?? '?'}, registry ${rec.registry}\n`);
    return rec;
  }
  if (containers.length > 0 || hasRecord) {
    ctx.out.progress(`  sandbox "${name}" is incomplete (${containers.length} container(s)${hasRecord ? ', a record' : ', no record'}): removing it to create it again\n`);
    await removeSandbox(deps, name);
  }
  const info = await createSandbox({ name, nodes: 1 }, deps);
  ctx.changes.push(`created sandbox "${name}" (${info.timings.totalS.toFixed(0)} s${info.rootfsBuilt ? ', root filesystem built and cached' : ''})`);
  return info;
}

/** `examples/modules/<name>/versions/<tag>/` directories, as {name: [tags]}. */
function exampleVersions(projectRoot: string): Record<string, string[]> {
  const root = path.join(projectRoot, 'examples', 'modules');
  const out: Record<string, string[]> = {};
  for (const name of readdirSync(root)) {
    const versions = path.join(root, name, 'versions');
    if (!existsSync(versions) || !statSync(versions).isDirectory()) continue;
    out[name] = readdirSync(versions).filter((t) => statSync(path.join(versions, t)).isDirectory());
  }
  return out;
}

/** True when the registry has `repo:tag` (HEAD of its manifest answers 200). */
async function registryHas(registry: string, image: string): Promise<boolean> {
  const [repo, tag] = image.split(':');
  const accept = ['application/vnd.oci.image.manifest.v1+json', 'application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.v2+json', 'application/vnd.docker.distribution.manifest.list.v2+json'].join(', ');
  return fetch(`http://${registry}/v2/${repo ?? ''}/manifests/${tag ?? ''}`, { method: 'HEAD', headers: { accept }, signal: AbortSignal.timeout(5000) }).then(
    (r) => r.status === 200,
    () => false,
  );
}

/**
 * Step 2: builds the example images for the sandbox registry and pushes them, unless the registry
 * has every one already. The local copies are removed once pushed: they are named after the
 * sandbox registry, so nothing else can use them.
 */
async function ensureImages(ctx: Ctx, rec: SandboxRecord): Promise<void> {
  const { deps } = ctx;
  const wanted = exampleImagePaths(exampleVersions(deps.projectRoot));
  const missing: string[] = [];
  for (const image of wanted) if (!(await registryHas(rec.registry, image))) missing.push(image);
  if (missing.length === 0) {
    ctx.out.progress(`  all ${wanted.length} example images are in the sandbox registry already\n`);
    return;
  }
  ctx.out.progress(`  building ${wanted.length} example images for ${rec.registry} (${missing.length} missing there): examples/modules/build-images.sh\n`);
  const build = await deps.runner.run(['bash', path.join(deps.projectRoot, 'examples', 'modules', 'build-images.sh'), '--registry', rec.registry], {
    purpose: 'demo: build the example images',
    mutating: true,
    allowFailure: true,
    timeoutMs: 900_000,
  });
  if (build.exitCode !== 0) throw new Ns8ctlError('demo_images_failed', `examples/modules/build-images.sh exited ${String(build.exitCode)}: ${build.stderr.trim().split('\n').slice(-3).join(' ')}`);
  const refs = build.stdout.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  try {
    for (const ref of refs) await pushImage({ name: ctx.name, image: ref }, deps);
  } finally {
    await deps.runner.run(['podman', 'rmi', '--ignore', ...refs], { purpose: 'demo: remove the local copies of the pushed images', mutating: true, allowFailure: true });
  }
  ctx.changes.push(`built and pushed ${refs.length} example images to ${rec.registry}`);
}

/**
 * Step 3: writes the demo manifests into node 1's config dir (the node sees them at
 * /etc/ns8ctl/manifests, the loop follows them) and links them from the demo dir. A manifest that
 * is there already is kept, even when the user edited it: the demo never undoes an edit.
 */
async function ensureManifests(ctx: Ctx, rec: SandboxRecord): Promise<string> {
  const { deps } = ctx;
  const real = path.join(sandboxPaths(deps.env, ctx.name).node(1).config, 'manifests');
  await fsp.mkdir(real, { recursive: true, mode: 0o755 });
  const nodeAddress = rec.addresses['1'] ?? '';
  for (const file of DEMO_MANIFESTS) {
    const source = await fsp.readFile(path.join(deps.projectRoot, 'manifests', file), 'utf8');
    const text = adjustManifest(source, { registry: rec.registry, nodeAddress });
    if (namesSourceRegistry(text)) throw new Ns8ctlError('demo_manifest_unadjusted', `manifests/${file} still names 127.0.0.1 after adjusting it to the sandbox (an image or address the demo does not know how to rewrite)`, { user: false });
    const target = path.join(real, file);
    const existing = await fsp.readFile(target, 'utf8').catch(() => null);
    if (existing === null) {
      // Whole files only: the loop's watcher must never read half a manifest.
      await fsp.writeFile(`${target}.tmp`, text, { mode: 0o644 });
      await fsp.rename(`${target}.tmp`, target);
      ctx.changes.push(`wrote ${file} (from manifests/${file}, adjusted to the sandbox)`);
    } else if (existing !== text) {
      ctx.out.progress(`  kept ${file}: it differs from manifests/${file} (edited?)\n`);
    }
  }
  for (const [file, why] of Object.entries(LEFT_OUT)) ctx.out.progress(`  left out manifests/${file}: ${why}\n`);
  const link = path.join(deps.demoDir, 'manifests');
  const current = await fsp.readlink(link).catch(() => null);
  if (current !== real) {
    await fsp.rm(link, { force: true, recursive: true });
    await fsp.symlink(real, link);
  }
  ctx.out.progress(`  manifests: ${link} (node 1 reads them at ${NODE_MANIFESTS})\n`);
  return link;
}

/**
 * Step 4: installs and enables `ns8ctl run` as the unit ns8ctl-demo in node 1 and starts it,
 * unless it runs. Enabled, not transient: it comes back by itself when the node boots again.
 * The unit file is written whole (temp file renamed) into node 1's config dir on the host, which
 * the node sees read-only, then copied into the node's /etc/systemd/system.
 */
async function ensureLoop(ctx: Ctx): Promise<void> {
  const active = await inNode(ctx, ['systemctl', 'is-active', LOOP_UNIT]);
  if (active.out.trim() === 'active') {
    ctx.out.progress(`  ${LOOP_UNIT}.service runs in node 1 already\n`);
    return;
  }
  const argv = ['/usr/local/bin/ns8ctl', 'run', '-f', NODE_MANIFESTS, '--prune', '--node', '1', '--no-http', '--agent-resync', '30s'];
  const file = `${LOOP_UNIT}.service`;
  const onHost = path.join(sandboxPaths(ctx.deps.env, ctx.name).node(1).config, file);
  await fsp.writeFile(`${onHost}.tmp`, loopUnitFile(argv, '/var/lib/ns8ctl'), { mode: 0o644 });
  await fsp.rename(`${onHost}.tmp`, onHost);
  const install = await inNode(ctx, ['sh', '-c', `cp ${NODE_CONFIG_DIR}/${file} /etc/systemd/system/${file}.tmp && mv /etc/systemd/system/${file}.tmp /etc/systemd/system/${file} && systemctl daemon-reload && systemctl reset-failed ${file}; systemctl enable --now ${file}`]);
  if (install.code !== 0) throw new Ns8ctlError('demo_loop_failed', `installing and starting ${file} in node 1 exited ${install.code}: ${(install.err || install.out).trim()}`);
  ctx.out.progress(`  started ${file} in node 1 (enabled: it starts again when the node boots): ${argv.slice(1).join(' ')}\n`);
  ctx.changes.push(`started the loop (${file}: ns8ctl run) in node 1`);
}

async function leaderUrl(ctx: Ctx, rec: SandboxRecord): Promise<string> {
  const url = leaderRedisUrlOf(rec, await readAdminPassword(ctx.deps, ctx.name));
  if (!url) throw new Ns8ctlError('sandbox_record_invalid', `sandbox "${ctx.name}" has no node 1 address in its record; remove it (npm run demo -- --down) and run the demo again`);
  return url;
}

/** Step 5: waits until the controller applied the manifests and every desired Module is Ready. */
async function waitReady(ctx: Ctx, redis: Redis): Promise<string[]> {
  const { deps } = ctx;
  const started = deps.now();
  const deadline = started + deps.readyTimeoutMs;
  let lastLine = '';
  let lastPrint = started;
  for (;;) {
    const ids = (await redis.smembers(keys.desiredIndex('Module'))).sort();
    const states = await Promise.all(ids.map(async (id) => ({ id, r: readinessOf(await redis.hgetall(keys.moduleStatus(id))) })));
    if (ids.length > 0 && states.every((s) => s.r.ready)) {
      ctx.out.progress(`  ${ids.join(', ')} Ready (${((deps.now() - started) / 1000).toFixed(0)} s)\n`);
      return ids;
    }
    const line = ids.length === 0 ? 'waiting for the controller to apply the manifests' : states.map((s) => `${s.id}: ${s.r.summary}`).join('; ');
    const elapsed = Math.round((deps.now() - started) / 1000);
    if (line !== lastLine || deps.now() - lastPrint >= 15_000) {
      ctx.out.progress(`  ${elapsed} s: ${line}\n`);
      lastLine = line;
      lastPrint = deps.now();
    }
    if (deps.now() > deadline) {
      const journal = await inNode(ctx, ['journalctl', '-u', LOOP_UNIT, '--no-pager', '-n', '40']).catch(() => ({ out: '' }));
      ctx.out.progress(`  last lines of ${LOOP_UNIT} in node 1:\n${journal.out}`);
      throw new Ns8ctlError('demo_not_ready', `not every Module was Ready within ${deps.readyTimeoutMs / 1000} s: ${line}`);
    }
    await deps.sleep(1000);
  }
}

/** Runs the CLI's own `main` against the sandbox's Redis and returns what it printed. */
async function cli(url: string, deps: DemoDeps, argv: string[]): Promise<string> {
  let text = '';
  const io = { ...processIO(), stdout: (t: string) => void (text += t), stderr: (t: string) => void (text += t), env: { ...deps.env, NS8CTL_REDIS_URL: url }, isTTY: false };
  const code = await cliMain(argv, io);
  if (code !== 0) throw new Ns8ctlError('demo_cli_failed', `ns8ctl ${argv.join(' ')} exited ${code}: ${text.trim()}`);
  return text;
}

/** The HTTP answer of an instance's container (it listens on 127.0.0.1:TCP_PORT inside the node). */
async function httpAnswer(ctx: Ctx, port: string): Promise<string> {
  const deadline = ctx.deps.now() + 60_000;
  for (;;) {
    const r = await inNode(ctx, ['curl', '-sS', '--max-time', '5', `http://127.0.0.1:${port}/`]);
    if (r.code === 0) return r.out;
    if (ctx.deps.now() > deadline) throw new Ns8ctlError('demo_http_failed', `nothing answered on http://127.0.0.1:${port}/ in node 1 within 60 s: ${r.err.trim()}`);
    await ctx.deps.sleep(1000);
  }
}

/** The command that runs the built CLI, as the user types it. */
function cliCommand(projectRoot: string): string {
  return `node ${path.join(projectRoot, 'dist', 'src', 'cli', 'bin.js')}`;
}

/**
 * Runs the demo (see the module doc). Throws `demo_needs_root`, `demo_host_unsupported`,
 * `tool_missing` before touching anything, and {@link DemoStepError} (step, what to do, log file)
 * when a step fails; what earlier steps made stays, so the next run goes on from there.
 */
export async function runDemo(opts: DemoOptions, deps: DemoDeps): Promise<DemoResult> {
  const name = validateSandboxName(opts.name);
  await checkDemoHost(deps);
  mkdirSync(deps.demoDir, { recursive: true, mode: 0o700 });
  const out = new Output(deps, path.join(deps.demoDir, 'demo.log'));
  out.progress(`demo: ${new Date(deps.now()).toISOString()} sandbox "${name}", log ${out.logFile}\n`);
  const ctx: Ctx = { deps, name, out, changes: [] };
  const down = `sudo npm run demo -- --down${name === 'demo' ? '' : ` --name ${name}`}`;

  const rec = await runStep(ctx, 1, `sandbox "${name}" with 1 node`, `check the lines above; remove a broken sandbox with: ${down}; then run the demo again`, () => ensureSandbox(ctx));
  await runStep(ctx, 2, 'example module images in the sandbox registry', `check that examples/modules/build-images.sh works (it needs podman, busybox-static and skopeo); then run the demo again`, () => ensureImages(ctx, rec));
  const manifestsDir = await runStep(ctx, 3, 'demo manifests adjusted to the sandbox', `check ${deps.demoDir} and the project's manifests/ directory; then run the demo again`, () => ensureManifests(ctx, rec));
  await runStep(ctx, 4, 'the continuous loop (ns8ctl run) in node 1', `see its log: sudo ${cliCommand(deps.projectRoot)} sandbox exec --name ${name} 1 -- journalctl -u ${LOOP_UNIT} -n 50`, () => ensureLoop(ctx));
  const url = await leaderUrl(ctx, rec);
  const redis = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: true });
  redis.on('error', () => undefined);
  try {
    const ids = await runStep(ctx, 5, 'waiting until every Module is Ready', `see the loop's log: sudo ${cliCommand(deps.projectRoot)} sandbox exec --name ${name} 1 -- journalctl -u ${LOOP_UNIT} -n 50; fix the manifest in ${path.join(deps.demoDir, 'manifests')} or run the demo again`, async () => {
      await redis.connect();
      return waitReady(ctx, redis);
    }, false);
    const http = await runStep(ctx, 6, 'the result', `run the demo again; if it persists: ${down}, then the demo`, async () => {
      const answers: DemoResult['http'] = [];
      out.result(`\n$ ns8ctl get modules -o wide\n${await cli(url, deps, ['get', 'modules', '-o', 'wide'])}`);
      for (const id of ids) {
        const port = (await redis.hget(keys.moduleEnvironment(id), 'TCP_PORT')) ?? '';
        if (!/^\d+$/.test(port)) continue;
        const body = await httpAnswer(ctx, port);
        answers.push({ id, port, body });
        out.result(`\n$ curl http://127.0.0.1:${port}/   # ${id}, inside node 1\n${body.endsWith('\n') ? body : `${body}\n`}`);
      }
      out.result(`\n$ ns8ctl events --limit 8\n${await cli(url, deps, ['events', '--limit', '8'])}`);
      return answers;
    });
    out.result(`\n${ctx.changes.length === 0 ? NOTHING_CHANGED : `changed:\n${ctx.changes.map((c) => `  - ${c}`).join('\n')}`}\n\n`);
    out.result(nextSteps({ cli: cliCommand(deps.projectRoot), name, manifestsDir, down }));
    return { name, changes: ctx.changes, manifestsDir, http, logFile: out.logFile };
  } finally {
    redis.disconnect();
  }
}

/** What `--down` removed and what it kept. */
export interface DownResult {
  containers: string[];
  network: string | null;
  images: string[];
  removedDirs: string[];
}

/**
 * Removes everything the demo made: the sandbox (containers, network, state dir with the registry
 * data and the manifests), any local copy of the example images named after its registry, and the
 * demo dir. Idempotent. Keeps the cached node root filesystem (shared by every sandbox; the next
 * demo would spend minutes building it again) and the Debian packages.
 */
export async function downDemo(opts: DemoOptions, deps: DemoDeps): Promise<DownResult> {
  const name = validateSandboxName(opts.name);
  await checkDemoHost(deps, 'demo --down');
  const rec = await readRecord(deps, name).catch(() => null);
  const removed = await removeSandbox(deps, name);
  let images: string[] = [];
  if (rec) {
    const listed = await deps.runner.run(['podman', 'images', '--format', '{{.Repository}}:{{.Tag}}', '--filter', `reference=${rec.registry}/ns8ctl-examples/*`], { allowFailure: true });
    images = listed.stdout.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.includes('<none>'));
    if (images.length > 0) await deps.runner.run(['podman', 'rmi', '--ignore', ...images], { purpose: 'demo --down: remove local example images', mutating: true, allowFailure: true });
  }
  const removedDirs: string[] = [];
  if (removed.stateDir) removedDirs.push(removed.stateDir);
  if (existsSync(deps.demoDir)) {
    await fsp.rm(deps.demoDir, { recursive: true, force: true });
    removedDirs.push(deps.demoDir);
  }
  return { containers: removed.containers, network: removed.network, images, removedDirs };
}

/** Human summary of `--down`. */
export function renderDown(name: string, r: DownResult, env: NodeJS.ProcessEnv): string {
  const lines = [`demo --down: sandbox "${name}"`];
  lines.push(`  removed containers: ${r.containers.length > 0 ? r.containers.join(', ') : 'none (already gone)'}`);
  lines.push(`  removed network: ${r.network ?? 'none'}`);
  if (r.images.length > 0) lines.push(`  removed local images: ${r.images.join(', ')}`);
  lines.push(`  removed directories: ${r.removedDirs.length > 0 ? r.removedDirs.join(', ') : 'none'}`);
  lines.push(`  kept: the cached node root filesystem under ${cacheRoot(env)} (shared by every sandbox; rebuilding it takes minutes; rm -rf it to reclaim ~300-550 MB),`);
  lines.push('        the Debian packages scripts/setup.sh installed, and the build in dist/');
  return lines.join('\n') + '\n';
}
