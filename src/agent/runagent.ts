/**
 * `ns8ctl runagent -m <id> [CMD...]`: runs a command (or a login shell) in an instance's agent
 * environment, as NS8's runagent does: the global agent env file, `state/agent.env` and
 * `state/environment` loaded, AGENT_INSTALL_DIR / AGENT_STATE_DIR / AGENT_ID set, the working
 * directory is the state dir, `<install dir>/bin` first on PATH. A rootless instance (a Unix user
 * of that name exists) runs as that user with XDG_RUNTIME_DIR=/run/user/<uid>; a rootfull one
 * (`/var/lib/nethserver/<id>`) runs as root.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { readEnvironmentFile } from './env-file.js';
import { AgentError } from '../errors.js';
import { agentIdOf, assertInstanceId } from './names.js';

/** Paths runagent reads (tests point them at temp dirs). */
export interface InstancePaths {
  /** Default `/etc/passwd`. */
  passwdFile?: string;
  /** Default `/var/lib/nethserver`. */
  rootfullBase?: string;
  /** Default `/etc/nethserver/agent.env` (optional file). */
  globalAgentEnv?: string;
}

/** Where an instance lives and who runs it. */
export interface InstanceLocation {
  id: string;
  rootfull: boolean;
  installDir: string;
  stateDir: string;
  /** The instance user's uid/gid/home (rootless only). */
  uid?: number;
  gid?: number;
  home?: string;
}

/** Looks a user up in a passwd file. */
export async function lookupUser(name: string, passwdFile = '/etc/passwd'): Promise<{ uid: number; gid: number; home: string } | undefined> {
  let text: string;
  try {
    text = await fs.readFile(passwdFile, 'utf8');
  } catch {
    return undefined;
  }
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f[0] === name && f.length >= 7) return { uid: Number(f[2]), gid: Number(f[3]), home: f[5] ?? '' };
  }
  return undefined;
}

/** Finds an instance: rootless when a user named `id` exists, else rootfull when its directory exists. */
export async function locateInstance(id: string, paths: InstancePaths = {}): Promise<InstanceLocation> {
  assertInstanceId(id);
  const user = await lookupUser(id, paths.passwdFile);
  if (user) {
    const installDir = path.join(user.home, '.config');
    return { id, rootfull: false, installDir, stateDir: path.join(installDir, 'state'), uid: user.uid, gid: user.gid, home: user.home };
  }
  const dir = path.join(paths.rootfullBase ?? '/var/lib/nethserver', id);
  try {
    if ((await fs.stat(dir)).isDirectory()) return { id, rootfull: true, installDir: dir, stateDir: path.join(dir, 'state') };
  } catch {
    // fall through
  }
  throw new AgentError('instance_not_found', `instance ${id} not found on this node: no Unix user ${id} (rootless) and no directory ${dir} (rootfull)`);
}

/** Prepends `dir` to a PATH value unless it is already there. */
export function withPathFirst(pathValue: string | undefined, dir: string): string {
  const parts = (pathValue ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin').split(':').filter(Boolean);
  return [dir, ...parts.filter((p) => p !== dir)].join(':');
}

/**
 * The agent environment of an instance. `base` is the starting environment: the caller's own
 * when it already is the instance user, a clean login environment when switching user.
 */
export async function buildAgentEnvironment(loc: InstanceLocation, base: Readonly<Record<string, string | undefined>>, paths: InstancePaths = {}): Promise<Record<string, string>> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(base)) if (v !== undefined) env[k] = v;
  for (const file of [paths.globalAgentEnv ?? '/etc/nethserver/agent.env', path.join(loc.stateDir, 'agent.env'), path.join(loc.stateDir, 'environment')]) {
    for (const [k, v] of await readEnvironmentFile(file).catch(() => new Map<string, string>())) env[k] = v;
  }
  env['AGENT_INSTALL_DIR'] = loc.installDir;
  env['AGENT_STATE_DIR'] = loc.stateDir;
  env['AGENT_ID'] = env['REDIS_USER'] || agentIdOf(loc.id);
  env['PATH'] = withPathFirst(env['PATH'], path.join(loc.installDir, 'bin'));
  return env;
}

/** The clean environment a switched-to user starts with (like `runuser -l`). */
export function loginEnvironment(loc: InstanceLocation, current: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const env: Record<string, string> = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: loc.home ?? loc.installDir,
    USER: loc.rootfull ? 'root' : loc.id,
    LOGNAME: loc.rootfull ? 'root' : loc.id,
    SHELL: '/bin/bash',
  };
  for (const k of ['TERM', 'LANG', 'LC_ALL', 'COLORTERM']) {
    const v = current[k];
    if (v !== undefined) env[k] = v;
  }
  if (!loc.rootfull && loc.uid !== undefined) env['XDG_RUNTIME_DIR'] = `/run/user/${loc.uid}`;
  return env;
}

/** What runagent decided to run. */
export interface RunagentPlan {
  argv: string[];
  cwd: string;
  env: Record<string, string>;
  uid?: number;
  gid?: number;
}

/**
 * Plans a runagent invocation. `command` empty means a login shell, allowed only on a terminal.
 * As root, a rootless instance runs as its user; as a non-root user only that instance's own user
 * may run it (refused otherwise, saying so).
 */
export async function planRunagent(
  id: string,
  command: readonly string[],
  ctx: { uid: number; isTTY: boolean; env: Readonly<Record<string, string | undefined>>; keepCwd?: string; paths?: InstancePaths },
): Promise<RunagentPlan> {
  const loc = await locateInstance(id, ctx.paths);
  let argv = [...command];
  if (argv.length === 0) {
    if (!ctx.isTTY) throw new AgentError('runagent_no_command', `runagent -m ${id}: give a command to run (a shell is started only on a terminal)`, { exitCode: 2 });
    argv = ['bash', '-l'];
  }
  const switching = ctx.uid === 0 && !loc.rootfull && loc.uid !== undefined && loc.uid !== 0;
  if (ctx.uid !== 0 && (loc.rootfull || loc.uid !== ctx.uid)) {
    throw new AgentError('runagent_not_permitted', `runagent -m ${id}: run it as root or as the user ${loc.rootfull ? 'root (rootfull instance)' : id}`);
  }
  const base = switching ? loginEnvironment(loc, ctx.env) : ctx.env;
  const env = await buildAgentEnvironment(loc, base, ctx.paths);
  return {
    argv,
    cwd: ctx.keepCwd ?? loc.stateDir,
    env,
    ...(switching ? { uid: loc.uid as number, gid: loc.gid as number } : {}),
  };
}
