/**
 * Chaos harness: a seeded random generator, the product's long-running components as real child
 * processes that a test stops with SIGTERM or SIGKILL (the whole process group, as systemd's
 * KillMode=control-group does) and starts again, the embedded redis-server stopped and started the
 * way the product runs it, and the leak checks of a node (users, ports, ACL users, keys, records,
 * unit files) against the instances that must exist.
 *
 * The components run from the built tree (`dist/`, `npm run build` first): the controller and the
 * embedded Redis through `node dist/src/cli/bin.js`, the node agent through the same
 * `nodeAgentCommand` the CLI's `node-agent` runs, with the host layout pointed at a temp dir (the
 * CLI has no layout flag: a test must not touch /home or /etc/systemd).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, promises as fs, readFileSync, type WriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Redis } from 'ioredis';
import { ProcessRunner } from '../../src/host/runner.js';
import type { HostLayout } from '../../src/node-agent/layout.js';
import { connectRedis } from '../../src/state/connect.js';
import { embeddedPaths } from '../../src/state/embedded-redis.js';
import { keys } from '../../src/state/keys.js';
import { ensureExampleImages, type ExampleImages } from './example-images.js';
import { preparePodmanHost } from './host-podman.js';
import { tempHostLayout } from './node-agent-layout.js';
import { freePort } from './redis-server.js';
import { startRegistry, type TestRegistry } from './registry.js';
import { waitFor } from './wait-for.js';

/** The checkout's root and its built CLI. */
export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = path.join(REPO, 'dist', 'src', 'cli', 'bin.js');

/** A small deterministic PRNG (mulberry32): a failing run is replayed with its seed. */
export function seededRandom(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type StopSignal = 'SIGTERM' | 'SIGKILL';

/** Whether a process with this pid exists (and is not a zombie). */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z /.test(stat);
  } catch {
    return false;
  }
}

/** A long-running component as a child process in its own process group. */
export interface ComponentProcess {
  readonly name: string;
  /** Pid of the running process (undefined when stopped). */
  readonly pid: number | undefined;
  /** Every stderr line of every run, in order (bounded to the last 20000). */
  readonly lines: string[];
  /** How many times it was started. */
  readonly starts: number;
  /** Starts it and waits (bounded) until a stderr line matches its ready pattern. */
  start(): Promise<void>;
  /**
   * Stops it: SIGKILL to the process group at once, or SIGTERM to the group and, when it is still
   * running after `graceMs`, SIGKILL. Resolves once the main process exited; returns its exit code
   * (null when killed by a signal).
   */
  stop(signal: StopSignal, graceMs?: number): Promise<number | null>;
}

/**
 * A component started as `node ARGV...` with `env`; stderr is kept in `lines` and appended to
 * `logFile`. `ready` is a stderr pattern that says the component is up.
 */
export function componentProcess(name: string, argv: string[], env: NodeJS.ProcessEnv, ready: RegExp, logFile: string): ComponentProcess {
  let child: ChildProcess | undefined;
  let exited: Promise<number | null> | undefined;
  let starts = 0;
  const lines: string[] = [];
  let log: WriteStream | undefined;
  const waiters: (() => void)[] = [];
  const c: ComponentProcess = {
    name,
    get pid() {
      return child && child.exitCode === null && child.signalCode === null ? child.pid : undefined;
    },
    lines,
    get starts() {
      return starts;
    },
    async start() {
      if (c.pid !== undefined) throw new Error(`${name} is already running (pid ${c.pid})`);
      log ??= createWriteStream(logFile, { flags: 'a' });
      starts++;
      const from = lines.length;
      log.write(`--- start ${starts} at ${new Date().toISOString()}\n`);
      const p = spawn(process.execPath, argv, { detached: true, env, stdio: ['ignore', 'pipe', 'pipe'] });
      child = p;
      exited = new Promise((r) => p.on('exit', (code) => r(code)));
      let partial = '';
      p.stderr!.on('data', (b: Buffer) => {
        log!.write(b);
        const parts = (partial + b.toString()).split('\n');
        partial = parts.pop()!;
        lines.push(...parts);
        if (lines.length > 20_000) lines.splice(0, lines.length - 20_000);
        for (const w of waiters.splice(0)) w();
      });
      p.stdout!.on('data', (b: Buffer) => log!.write(b));
      p.on('exit', () => {
        if (partial) lines.push(partial);
        partial = '';
        for (const w of waiters.splice(0)) w();
      });
      const deadline = Date.now() + 60_000;
      while (!lines.slice(from).some((l) => ready.test(l))) {
        if (p.exitCode !== null || p.signalCode !== null) throw new Error(`${name} exited (${p.exitCode ?? p.signalCode}) before it was ready: ${lines.slice(from).join('\n')}`);
        if (Date.now() > deadline) throw new Error(`${name} was not ready within 60 s: ${lines.slice(from).join('\n')}`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 1000);
        });
      }
    },
    async stop(signal, graceMs = 20_000) {
      const p = child;
      if (!p || !exited || c.pid === undefined) return p?.exitCode ?? null;
      const group = (s: StopSignal): void => {
        try {
          process.kill(-p.pid!, s);
        } catch {
          /* already gone */
        }
      };
      group(signal);
      let timer: NodeJS.Timeout | undefined;
      if (signal === 'SIGTERM') timer = setTimeout(() => group('SIGKILL'), graceMs);
      const code = await exited;
      if (timer) clearTimeout(timer);
      // What the main process left behind in its group (a podman it ran) goes too, as systemd does.
      group('SIGKILL');
      log?.write(`--- stopped with ${signal}: exit ${code ?? p.signalCode}\n`);
      return code;
    },
  };
  return c;
}

/**
 * Writes the entry point that runs the CLI's `node-agent` command body (`nodeAgentCommand`) from
 * `dist/` with a host layout given as JSON: argv[2] the command's options, argv[3] the layout.
 * It connects to Redis exactly as the CLI does (--redis / NS8CTL_REDIS_URL / state dir).
 */
export async function writeNodeAgentEntry(dir: string): Promise<string> {
  const dist = (rel: string): string => pathToFileURL(path.join(REPO, 'dist', 'src', rel)).href;
  const file = path.join(dir, 'node-agent-entry.mjs');
  await fs.writeFile(
    file,
    `import { nodeAgentCommand } from ${JSON.stringify(dist('cli/commands/node-agent.js'))};
import { ProcessRunner } from ${JSON.stringify(dist('host/runner.js'))};
import { connectRedis } from ${JSON.stringify(dist('state/connect.js'))};
import { resolveStateDir } from ${JSON.stringify(dist('state/state-dir.js'))};
import { toNs8ctlError } from ${JSON.stringify(dist('errors.js'))};
const [opts, layout] = process.argv.slice(2).map((a) => JSON.parse(a));
const runner = new ProcessRunner(1000, undefined, process.env);
let conn;
const deps = {
  stdout: (t) => void process.stdout.write(t),
  stderr: (t) => void process.stderr.write(t),
  env: process.env,
  isTTY: false,
  runner,
  stdin: async () => '',
  cwd: process.cwd(),
  connect: (o = {}) => (conn ??= connectRedis({ stateDir: resolveStateDir(undefined, process.env), env: process.env, runner, name: 'ns8ctl', ...o })),
};
try {
  process.exitCode = await nodeAgentCommand(opts, deps, { layout });
} catch (err) {
  process.stderr.write('error: ' + toNs8ctlError(err).message + '\\n');
  process.exitCode = 1;
} finally {
  if (conn) (await conn.catch(() => undefined))?.redis.disconnect();
}
`,
  );
  return file;
}

/** Runs `ns8ctl ARGS` (the built CLI) with `env`; never throws on a non-zero exit. */
export async function runBin(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await new ProcessRunner(1000, undefined, env).run([process.execPath, BIN, ...args], { allowFailure: true, timeoutMs: 120_000 });
  return { code: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/**
 * The embedded redis-server of a state dir, run as the product runs it: started by the first
 * `ns8ctl` command that finds nothing answering (here `ns8ctl get modules`), daemonized, its pid in
 * the state dir. `stop` signals that pid and waits until the process is gone.
 */
export class EmbeddedRedis {
  stops = 0;
  constructor(
    readonly stateDir: string,
    readonly env: NodeJS.ProcessEnv,
  ) {}

  /** Pid of the running server, from its pid file; undefined when none runs. */
  pid(): number | undefined {
    const file = embeddedPaths(this.stateDir).pid;
    if (!existsSync(file)) return undefined;
    const pid = Number(readFileSync(file, 'utf8').trim());
    if (!Number.isInteger(pid) || pid <= 0 || !processAlive(pid)) return undefined;
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('redis-server') ? pid : undefined;
  }

  /** Starts it through the CLI (bounded); a no-op when it runs. */
  async start(): Promise<void> {
    if (this.pid() !== undefined) return;
    const r = await runBin(['get', 'modules'], this.env);
    if (r.code !== 0) throw new Error(`ns8ctl get modules (starting the embedded Redis) exited ${r.code}: ${r.stderr}`);
    await waitFor('the embedded redis-server pid file', () => this.pid() !== undefined, 10_000);
  }

  /** Stops it with `signal` and waits (bounded) until the process is gone. */
  async stop(signal: StopSignal): Promise<void> {
    const pid = this.pid();
    if (pid === undefined) throw new Error('the embedded redis-server is not running');
    process.kill(pid, signal);
    this.stops++;
    await waitFor(`redis-server ${pid} to exit after ${signal}`, () => !processAlive(pid), 30_000);
  }

  /** The server's log (AOF loading errors are reported there). */
  log(): string {
    const file = embeddedPaths(this.stateDir).log;
    return existsSync(file) ? readFileSync(file, 'utf8') : '';
  }
}

/** One line per thing of an instance that exists although the instance must not. */
export async function findLeaks(admin: Redis, layout: HostLayout, opts: { node: number; prefix: string; keep: ReadonlySet<string>; removalPolicies: ReadonlyMap<string, 'Preserve' | 'Delete'> }): Promise<string[]> {
  const leaks: string[] = [];
  const ours = (id: string): boolean => id.startsWith(opts.prefix) && !opts.keep.has(id);
  const passwd = await fs.readFile(layout.passwdFile, 'utf8');
  for (const line of passwd.split('\n')) {
    const id = line.split(':')[0]!;
    if (ours(id)) leaks.push(`Unix user ${id}`);
  }
  for (const field of Object.keys(await admin.hgetall(keys.nodePorts(opts.node)))) if (ours(field.split('/')[0]!)) leaks.push(`port allocation ${keys.nodePorts(opts.node)} ${field}`);
  for (const line of (await admin.call('ACL', 'LIST')) as string[]) {
    const m = /^user module\/(\S+) /.exec(line);
    if (m && ours(m[1]!)) leaks.push(`Redis ACL user module/${m[1]}`);
  }
  for (const line of await admin.smembers('cluster/acls')) {
    const m = /^user module\/(\S+) /.exec(line);
    if (m && ours(m[1]!)) leaks.push(`cluster/acls entry of module/${m[1]}`);
  }
  for (const k of await scanKeys(admin, `module/${opts.prefix}*`)) if (ours(k.split('/')[1]!)) leaks.push(`key ${k}`);
  for (const k of await scanKeys(admin, `ns8ctl/*/module/${opts.prefix}*`)) if (ours(k.split('/').at(-1)!)) leaks.push(`key ${k}`);
  for (const field of Object.keys(await admin.hgetall(keys.moduleNode()))) if (ours(field)) leaks.push(`${keys.moduleNode()} ${field}`);
  for (const field of Object.keys(await admin.hgetall(keys.tcpPortsDemand()))) if (ours(field)) leaks.push(`${keys.tcpPortsDemand()} ${field}`);
  for (const id of await admin.smembers(keys.desiredIndex('Module'))) if (ours(id)) leaks.push(`desired index entry ${id}`);
  const list = async (dir: string): Promise<string[]> => fs.readdir(dir).catch(() => [] as string[]);
  for (const f of await list(path.join(layout.agentStateDir, 'instances'))) if (ours(f.replace(/\.json$/, ''))) leaks.push(`instance record ${f}`);
  for (const f of await list(layout.uiBase)) if (ours(f.replace(/\.ns8ctl-\w+$/, ''))) leaks.push(`UI dir ${f}`);
  for (const f of await list(layout.lingerDir)) if (ours(f)) leaks.push(`linger flag ${f}`);
  const named = new RegExp(`${opts.prefix}\\d+`, 'g');
  for (const dir of [layout.systemUnitDir, layout.userUnitDir]) for (const f of await list(dir)) if ((f.match(named) ?? []).some(ours)) leaks.push(`unit file ${path.join(dir, f)}`);
  for (const f of await list(layout.homeBase)) if (ours(f) && opts.removalPolicies.get(f) !== 'Preserve') leaks.push(`home ${path.join(layout.homeBase, f)} (removalPolicy Delete)`);
  return leaks;
}

/** Every key matching `pattern` (SCAN, bounded by the keyspace). */
export async function scanKeys(redis: Redis, pattern: string): Promise<string[]> {
  const out: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    out.push(...batch);
    cursor = next;
  } while (cursor !== '0');
  return out;
}

/** uid and home inode of a Unix user: they change when the user is removed and made again. */
export async function userIdentity(layout: HostLayout, id: string): Promise<string | undefined> {
  const line = (await fs.readFile(layout.passwdFile, 'utf8')).split('\n').find((l) => l.startsWith(`${id}:`));
  if (!line) return undefined;
  const [, , uid, , , home] = line.split(':');
  const st = await fs.stat(home!).catch(() => undefined);
  return `uid ${uid} home inode ${st?.ino ?? 'missing'}`;
}

/** Parses the node agent's JSON log lines (`--log-format json`); other lines are skipped. */
export function parseJsonLines(lines: readonly string[]): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const l of lines) {
    if (!l.startsWith('{')) continue;
    try {
      out.push(JSON.parse(l) as Record<string, unknown>);
    } catch {
      /* a line cut by a kill */
    }
  }
  return out;
}

/** Ids the node agent logged as removed (`instance reconciled ... outcome removed`). */
export function removalsLogged(lines: readonly string[]): string[] {
  return parseJsonLines(lines)
    .filter((l) => l.msg === 'instance reconciled' && l.outcome === 'removed')
    .map((l) => String(l.id));
}

/** What a test of the product's processes on this host starts from (see hostWorkspace). */
export interface HostWorkspace {
  registry: TestRegistry;
  images: ExampleImages;
  /** Temp dir holding everything below (removed by the test). */
  root: string;
  /** Manifests directory, with node 1's Node manifest. */
  manifests: string;
  layout: HostLayout;
  /** The environment of every ns8ctl process: no NS8CTL_* of the caller, a state dir of its own, a free embedded port. */
  env: NodeJS.ProcessEnv;
  /** The embedded Redis of that state dir (not started: the first CLI command or start() does it). */
  redis: EmbeddedRedis;
  /** Entry script that runs the node agent with `layout` (see writeNodeAgentEntry). */
  agentEntry: string;
}

/**
 * Podman ready on this host, a loopback registry with the example images, and a temp workspace
 * (`prefix` names it) for the controller, the node agent and the embedded Redis as processes.
 */
export async function hostWorkspace(prefix: string): Promise<HostWorkspace> {
  await preparePodmanHost();
  const registry = await startRegistry();
  const images = await ensureExampleImages(registry.address);
  const root = await fs.mkdtemp(path.join(tmpdir(), prefix));
  await fs.chmod(root, 0o755);
  await fs.mkdir(path.join(root, 'home'), { mode: 0o755 });
  const manifests = path.join(root, 'manifests');
  await fs.mkdir(manifests);
  await fs.writeFile(path.join(manifests, 'node-1.yaml'), 'apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: {name: node1}\nspec: {id: 1}\n');
  const layout = tempHostLayout(root);
  const env = { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NS8CTL_'))), NS8CTL_STATE_DIR: path.join(root, 'state'), NS8CTL_EMBEDDED_PORT: String(await freePort()) };
  const redis = new EmbeddedRedis(path.join(root, 'state'), env);
  const agentEntry = await writeNodeAgentEntry(root);
  return { registry, images, root, manifests, layout, env, redis, agentEntry };
}

/** One admin connection to a workspace's embedded Redis, made when first asked for. */
export interface WorkspaceAdmin {
  /** The connection, opened on first use (and again after drop()); never starts Redis. */
  get(): Promise<Redis>;
  /** Closes the connection, if any: call it before stopping Redis, so the next get() reconnects. */
  drop(): void;
}

/**
 * An admin client of the embedded Redis of the workspace `ws()` names (read on each connect, so
 * it can be created before beforeAll fills the workspace in), connected as the CLI does through
 * the state dir `<root>/state`, under the client name `name`.
 *
 * @throws from get(): what connectRedis throws when that Redis is not running.
 */
export function workspaceAdmin(ws: () => { root: string; env: NodeJS.ProcessEnv }, name: string): WorkspaceAdmin {
  let admin: Redis | undefined;
  return {
    async get() {
      const { root, env } = ws();
      admin ??= (await connectRedis({ stateDir: path.join(root, 'state'), env, runner: new ProcessRunner(), name, startEmbedded: false })).redis;
      return admin;
    },
    drop() {
      admin?.disconnect();
      admin = undefined;
    },
  };
}
