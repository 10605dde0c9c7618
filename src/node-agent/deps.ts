/**
 * The node agent's dependencies, all injectable: Redis, the command runner, the host layout,
 * where desired state comes from, the host adapters, image resolution, the clock and the log.
 * `createNodeAgentDeps` fills in the production ones.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { renderRootfullAgentUnit, renderRootlessAgentUnit } from '../agent/agent-unit.js';
import { Ns8ctlError } from '../errors.js';
import type { CommandRunner } from '../host/runner.js';
import type { ModuleSpec } from '../manifest/types.js';
import { readCoreVersion } from '../repository/core-version.js';
import { RedisDesiredSource, type DesiredSource } from './desired-source.js';
import { RunnerPodmanHost, type PodmanHost } from './host/podman.js';
import { RunnerSystemdHost, type SystemdHost } from './host/systemd.js';
import { RunnerUserHost, type UserHost } from './host/users.js';
import { defaultLayout, type HostLayout } from './layout.js';
import { RecordStore } from './records.js';

export interface NodeAgentOptions {
  /** NS8 node id this agent reconciles. */
  node: number;
  /** Instances reconciled at the same time (default 4). */
  concurrency?: number;
  /** Registry hosts (`host:port`) reached without TLS verification (a loopback test registry). */
  insecureRegistries?: string[];
  /** Overrides of the host layout roots (tests point them at temp dirs). */
  layout?: Partial<HostLayout>;
  /**
   * Command line that runs ns8ctl, for the module agent's unit (`[ns8ctl] agent --id ...`).
   * Default: `ns8ctl` found on PATH, else this process's node and script. `[]` disables the
   * module agent unit.
   */
  agentCommand?: string[];
  /**
   * Where module agents reach Redis, written to each instance's agent.env as REDIS_ADDRESS
   * (`host:port`, or a `redis://` / `rediss://` URL). Default: the address of the node agent's own
   * connection (`redisAddressOf`).
   */
  redisAddress?: string;
  /** Longest wait for a lifecycle action (create-module, update-module, destroy-module) of a module agent, ms. Default 300 s. */
  lifecycleTimeoutMs?: number;
}

export interface NodeAgentDeps {
  redis: Redis;
  runner: CommandRunner;
  layout: HostLayout;
  source: DesiredSource;
  records: RecordStore;
  podman: PodmanHost;
  users: UserHost;
  systemd: SystemdHost;
  /** Image URL for a Module spec (repositories are issue 6's: injected). */
  resolveImage: (spec: ModuleSpec) => Promise<string>;
  /** Core version updates are checked against (`org.nethserver.min-core`); default `readCoreVersion()`. */
  coreVersion: () => Promise<string>;
  now: () => Date;
  log: (line: string) => void;
  /** Sleeps (injected so tests can run the loop without waiting). */
  delay: (ms: number) => Promise<void>;
  /** Contents of the module agent's units; undefined: the agent does not manage them. */
  agentUnits?: { rootless: string; rootfull: string };
  /** REDIS_ADDRESS for the instances' agent.env; undefined: none written (the module agent's default applies). */
  redisAddress?: string;
  /** Longest wait for a lifecycle action of a module agent (ms). */
  lifecycleTimeoutMs: number;
  /** Command line of ns8ctl the backup timers' services run (default: the module agent's command, else /usr/local/bin/ns8ctl). */
  backupCommand?: string[];
}

/**
 * The address a module agent on this host uses to reach the Redis `redis` is connected to:
 * `host:port` (NS8's REDIS_ADDRESS form), `rediss://host:port` over TLS; undefined for a Unix
 * socket (the module agent only speaks TCP).
 */
export function redisAddressOf(redis: Redis): string | undefined {
  const o = redis.options as { host?: string; port?: number; path?: string | null; tls?: unknown };
  if (o.path) return undefined;
  const host = o.host || '127.0.0.1';
  const hostPort = `${host.includes(':') ? `[${host}]` : host}:${o.port ?? 6379}`;
  return o.tls ? `rediss://${hostPort}` : hostPort;
}

/** `ns8ctl` on PATH (absolute), else this process's node binary and script. */
export function defaultAgentCommand(env: NodeJS.ProcessEnv = process.env): string[] {
  for (const dir of (env.PATH ?? '').split(':').filter((d) => path.isAbsolute(d))) {
    const candidate = path.join(dir, 'ns8ctl');
    if (existsSync(candidate)) return [candidate];
  }
  const script = process.argv[1];
  return script && /bin\.js$/.test(script) ? [process.execPath, path.resolve(script)] : [];
}

/** The module agent's units for a command line (none when it is empty). */
export function agentUnitsFor(command: readonly string[]): { rootless: string; rootfull: string } | undefined {
  if (!command.length) return undefined;
  return { rootless: renderRootlessAgentUnit({ ns8ctl: command }), rootfull: renderRootfullAgentUnit({ ns8ctl: command }) };
}

/**
 * Default image resolution: a spec with `image` uses it as is; a spec with `module` needs the
 * repository resolver (issue 6) and fails with `image_resolution_unavailable`.
 */
export async function defaultResolveImage(spec: ModuleSpec): Promise<string> {
  if (spec.image) return spec.image;
  throw new Ns8ctlError(
    'image_resolution_unavailable',
    `module ${JSON.stringify(spec.module)} must be resolved to an image URL through the repositories, which this node agent was not given; use spec.image with a full image URL, or run the agent with repository resolution`,
  );
}

/** Production dependencies for everything not given. */
export function createNodeAgentDeps(opts: NodeAgentOptions, given: { redis: Redis; runner: CommandRunner } & Partial<NodeAgentDeps>): NodeAgentDeps {
  const layout = given.layout ?? defaultLayout(opts.layout);
  const delay = given.delay ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  return {
    redis: given.redis,
    runner: given.runner,
    layout,
    source: given.source ?? new RedisDesiredSource(given.redis),
    records: given.records ?? new RecordStore(layout.agentStateDir),
    podman: given.podman ?? new RunnerPodmanHost(given.runner, layout, { insecureRegistries: opts.insecureRegistries ?? [] }),
    users: given.users ?? new RunnerUserHost(given.runner, layout),
    systemd: given.systemd ?? new RunnerSystemdHost(given.runner, layout, { delay }),
    resolveImage: given.resolveImage ?? defaultResolveImage,
    coreVersion: given.coreVersion ?? (() => readCoreVersion()),
    now: given.now ?? (() => new Date()),
    log: given.log ?? ((line: string) => process.stderr.write(line + '\n')),
    delay,
    lifecycleTimeoutMs: given.lifecycleTimeoutMs ?? opts.lifecycleTimeoutMs ?? 300_000,
    ...(() => {
      const address = given.redisAddress ?? opts.redisAddress ?? redisAddressOf(given.redis);
      return address ? { redisAddress: address } : {};
    })(),
    ...(() => {
      const command = opts.agentCommand ?? defaultAgentCommand();
      const units = given.agentUnits ?? agentUnitsFor(command);
      return { ...(units ? { agentUnits: units } : {}), ...(command.length ? { backupCommand: command } : {}) };
    })(),
  };
}
