/**
 * Small fakes behind the node agent's host interfaces (PodmanHost, SystemdHost, UserHost,
 * CommandRunner), for unit tests of step handlers and the reconciler without podman, systemd or
 * useradd. Files are real (a temp layout): the handlers' file-system effects are what is checked.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import type { CommandRecord, CommandRunner, RunOptions } from '../../src/host/runner.js';
import type { NodeAgentDeps } from '../../src/node-agent/deps.js';
import type { DesiredSource } from '../../src/node-agent/desired-source.js';
import { findImage, type LocalImage } from '../../src/host/image-store.js';
import type { Owner } from '../../src/node-agent/host/owner.js';
import type { CachedImage, ImageCache } from '../../src/node-agent/host/image-cache.js';
import type { ExtractPart, PodmanHost } from '../../src/node-agent/host/podman.js';
import type { SystemdHost, UnitScope } from '../../src/node-agent/host/systemd.js';
import type { UserHost } from '../../src/node-agent/host/users.js';
import type { HostLayout } from '../../src/node-agent/layout.js';
import { RecordStore } from '../../src/node-agent/records.js';
import type { ImageFacts } from '../../src/node-agent/types.js';
import { tempHostLayout } from './node-agent-layout.js';

const ownerName = (o: Owner): string => (o.kind === 'root' ? 'root' : o.name);
/** `system`, or `user:<name>:<uid>`: which manager a call went to. */
const scopeName = (s: UnitScope): string => (s.kind === 'system' ? 'system' : `user:${s.user}:${s.uid}`);

/** Records every command; answers exit 0 with the output `respond` gives (default empty). */
export class FakeRunner implements CommandRunner {
  readonly history: (CommandRecord & { mutating: boolean })[] = [];
  respond: (argv: string[]) => string = () => '';
  async run(argv: string[], opts: RunOptions = {}): Promise<CommandRecord> {
    const rec = { argv, exitCode: 0, stdout: this.respond(argv), stderr: '', durationMs: 0, mutating: opts.mutating ?? false } as CommandRecord & { mutating: boolean };
    this.history.push(rec);
    return rec;
  }
}

/** Users in the layout's passwd file (uids from 5000), homes made as directories. */
export class FakeUsers implements UserHost {
  readonly calls: string[] = [];
  private nextUid = 5000;
  constructor(private readonly layout: HostLayout) {}
  async create(id: string): Promise<void> {
    this.calls.push(`create ${id}`);
    const uid = this.nextUid++;
    const home = path.join(this.layout.homeBase, id);
    await fs.mkdir(home, { recursive: true });
    await fs.appendFile(this.layout.passwdFile, `${id}:x:${uid}:${uid}::${home}:/sbin/nologin\n`);
  }
  async addSubids(id: string): Promise<void> {
    this.calls.push(`add-subids ${id}`);
  }
  async remove(id: string): Promise<void> {
    this.calls.push(`remove ${id}`);
    const text = await fs.readFile(this.layout.passwdFile, 'utf8').catch(() => '');
    await fs.writeFile(this.layout.passwdFile, text.split('\n').filter((l) => l && !l.startsWith(`${id}:`)).map((l) => `${l}\n`).join(''));
  }
  async killProcesses(id: string): Promise<void> {
    this.calls.push(`kill ${id}`);
  }
  async chownTree(dir: string, uid: number, gid: number): Promise<void> {
    this.calls.push(`chown ${dir} ${uid}:${gid}`);
  }
  async removeTree(dir: string): Promise<void> {
    this.calls.push(`remove-tree ${dir}`);
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/**
 * The node's module-image cache in memory: `ensure` fetches once per URL (calls `fetch <url>` in
 * the podman fake's calls), `copy` writes the image's files (the podman fake's `content`).
 */
export class FakeImageCache implements ImageCache {
  readonly entries = new Map<string, CachedImage>();
  constructor(private readonly podman: FakePodman) {}
  async lookup(url: string): Promise<CachedImage | undefined> {
    return this.entries.get(url);
  }
  async ensure(url: string, opts: { digest?: string; roots: string[] }): Promise<CachedImage> {
    const have = this.entries.get(url);
    if (have) return have;
    this.podman.calls.push(`fetch ${url}${opts.digest ? ` ${opts.digest}` : ''}`);
    const files = this.podman.content.get(url) ?? {};
    const roots = Object.fromEntries(opts.roots.filter((r) => files[r]).map((r) => [r, Object.keys(files[r]!).sort()]));
    const entry = { ...this.podman.facts(url), roots };
    this.entries.set(url, entry);
    return entry;
  }
  async copy(image: CachedImage, root: string, dest: string, owner: Owner): Promise<string[] | undefined> {
    this.podman.calls.push(`copy ${ownerName(owner)} ${image.url} ${root}`);
    const files = this.podman.content.get(image.url)?.[root];
    if (!files) return undefined;
    for (const [rel, text] of Object.entries(files)) {
      await fs.mkdir(path.dirname(path.join(dest, rel)), { recursive: true });
      await fs.writeFile(path.join(dest, rel), text);
    }
    return Object.keys(files).sort();
  }
  async evict(keep: ReadonlySet<string>): Promise<string[]> {
    const removed: string[] = [];
    for (const [url, e] of this.entries) {
      if (keep.has(e.id) || keep.has(e.digest)) continue;
      this.entries.delete(url);
      removed.push(e.digest);
    }
    return removed;
  }
}

/** Per-owner image stores in memory; `extract` writes the given files into each part's dest. */
export class FakePodman implements PodmanHost {
  readonly calls: string[] = [];
  readonly cache: FakeImageCache = new FakeImageCache(this);
  readonly stores = new Map<string, LocalImage[]>();
  /** Files each image holds under a root (`imageroot` -> {relative path: content}). */
  readonly content = new Map<string, Record<string, Record<string, string>>>();
  facts: (url: string) => ImageFacts = (url) => ({ url, id: `id-${url}`, digest: 'sha256:d', repoDigest: '', labels: {} });
  add(owner: Owner, url: string): void {
    const list = this.stores.get(ownerName(owner)) ?? [];
    list.push({ id: this.facts(url).id, digest: this.facts(url).digest, names: [url], digests: [] });
    this.stores.set(ownerName(owner), list);
  }
  async listImages(owner: Owner): Promise<LocalImage[]> {
    return this.stores.get(ownerName(owner)) ?? [];
  }
  async pull(owner: Owner, url: string): Promise<void> {
    this.calls.push(`pull ${ownerName(owner)} ${url}`);
    if (!findImage(await this.listImages(owner), url)) this.add(owner, url);
  }
  async inspectLocal(_owner: Owner, url: string): Promise<ImageFacts> {
    return this.facts(url);
  }
  async inspectRemote(url: string): Promise<ImageFacts> {
    return this.facts(url);
  }
  async extract(owner: Owner, url: string, parts: ExtractPart[]): Promise<(string[] | undefined)[]> {
    this.calls.push(`extract ${ownerName(owner)} ${url} ${parts.map((p) => p.root).join(' ')}`);
    const out: string[][] = [];
    for (const part of parts) {
      const files = this.content.get(url)?.[part.root] ?? {};
      for (const [rel, text] of Object.entries(files)) {
        await fs.mkdir(path.dirname(path.join(part.dest, rel)), { recursive: true });
        await fs.writeFile(path.join(part.dest, rel), text);
      }
      out.push(Object.keys(files).sort());
    }
    return out;
  }
  async removeImages(owner: Owner, refs: string[], containers: string[] = []): Promise<void> {
    if (containers.length) this.calls.push(`rm ${ownerName(owner)} ${containers.join(' ')}`);
    this.calls.push(`rmi ${ownerName(owner)} ${refs.join(' ')}`);
    this.stores.set(ownerName(owner), (this.stores.get(ownerName(owner)) ?? []).filter((i) => !refs.some((r) => i.names.includes(r))));
  }
}

/** Unit states in memory: started units are active unless listed in `failing`; each call names its scope. */
export class FakeSystemd implements SystemdHost {
  readonly calls: string[] = [];
  readonly active = new Set<string>();
  readonly failing = new Set<string>();
  readonly linger = new Set<string>();
  /** How many times `isActive` was asked. */
  polls = 0;
  async missing(): Promise<string | undefined> {
    return undefined;
  }
  async lingerEnabled(user: string): Promise<boolean> {
    return this.linger.has(user);
  }
  async enableLinger(user: string): Promise<void> {
    this.calls.push(`enable-linger ${user}`);
    this.linger.add(user);
  }
  async disableLinger(user: string, uid: number): Promise<void> {
    this.calls.push(`disable-linger ${user} ${uid}`);
    this.linger.delete(user);
  }
  async daemonReload(scope: UnitScope): Promise<void> {
    this.calls.push(`daemon-reload ${scopeName(scope)}`);
  }
  async enable(scope: UnitScope, units: string[]): Promise<void> {
    this.calls.push(`enable ${scopeName(scope)} ${units.join(' ')}`);
  }
  async disable(scope: UnitScope, units: string[]): Promise<void> {
    this.calls.push(`disable ${scopeName(scope)} ${units.join(' ')}`);
  }
  async start(scope: UnitScope, units: string[]): Promise<void> {
    this.calls.push(`start ${scopeName(scope)} ${units.join(' ')}`);
    for (const u of units) if (!this.failing.has(u)) this.active.add(u);
  }
  async restart(scope: UnitScope, units: string[]): Promise<void> {
    this.calls.push(`restart ${scopeName(scope)} ${units.join(' ')}`);
    for (const u of units) if (!this.failing.has(u)) this.active.add(u);
  }
  async stop(scope: UnitScope, units: string[]): Promise<void> {
    this.calls.push(`stop ${scopeName(scope)} ${units.join(' ')}`);
    for (const u of units) this.active.delete(u);
  }
  async activeFromCgroup(_scope: UnitScope, unit: string): Promise<boolean | undefined> {
    return this.active.has(unit);
  }
  async isActive(_scope: UnitScope, units: string[]): Promise<Record<string, string>> {
    this.polls++;
    return Object.fromEntries(units.map((u) => [u, this.active.has(u) ? 'active' : this.failing.has(u) ? 'failed' : 'inactive']));
  }
  async describe(_scope: UnitScope, unit: string): Promise<string> {
    return `${unit}: failed (exit code 1)`;
  }
}

/** Node agent dependencies over a temp layout under `root`, with the fakes above; no Redis. */
export interface FakeNodeAgent {
  deps: NodeAgentDeps;
  layout: HostLayout;
  users: FakeUsers;
  podman: FakePodman;
  systemd: FakeSystemd;
  runner: FakeRunner;
  logs: string[];
}

export async function fakeNodeAgent(root: string): Promise<FakeNodeAgent> {
  const layout = tempHostLayout(root, { passwdFile: path.join(root, 'passwd'), subuidFile: path.join(root, 'subuid'), subgidFile: path.join(root, 'subgid') });
  await fs.mkdir(layout.homeBase, { recursive: true });
  await fs.writeFile(layout.passwdFile, 'root:x:0:0:root:/root:/bin/sh\n');
  const users = new FakeUsers(layout);
  const podman = new FakePodman();
  const systemd = new FakeSystemd();
  const runner = new FakeRunner();
  const logs: string[] = [];
  const finalizers = new Set<string>();
  const source = {
    addFinalizer: async (id: string) => (finalizers.add(id), true),
    releaseFinalizer: async (id: string) => void finalizers.delete(id),
  } as unknown as DesiredSource;
  const deps: NodeAgentDeps = {
    // Handlers that reach Redis are covered by the integration tests with a real redis-server.
    redis: {} as Redis,
    runner,
    layout,
    source,
    records: new RecordStore(layout.agentStateDir),
    podman,
    users,
    systemd,
    resolveImage: async (spec) => spec.image ?? '',
    coreVersion: async () => '3.0.0',
    now: () => new Date('2026-12-05T00:00:00Z'),
    log: (line) => void logs.push(line),
    delay: async () => undefined,
    lifecycleTimeoutMs: 1000,
  };
  return { deps, layout, users, podman, systemd, runner, logs };
}
