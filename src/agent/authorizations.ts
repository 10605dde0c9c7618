/**
 * Roles and authorizations as NS8 keeps them:
 * - an agent defines roles as SETs of action globs: `<agent_id>/roles/<role>` (e.g.
 *   `module/traefik1/roles/routeadm` = {set-route, delete-route});
 * - a module's `org.nethserver.authorizations` label (`traefik@any:routeadm node:portsadm`) is kept
 *   in `cluster/authorizations/module/<id>` (with `self:selfadm` added);
 * - grants: HASH `roles/module/<id>`, field `<agent_id>`, value the role names (comma separated),
 *   written for every agent the selector matches that defines the role.
 * computeGrants is pure; applyGrants recomputes everything from Redis and converges the grant
 * hashes, so grants follow instances added later (`X@any`) and vanish with removed ones.
 *
 * ns8ctl addition: with NS8's ACL a module agent cannot read `roles/*`, so applyGrants also keeps
 * a readable mirror per target module, HASH `module/<id>/grants` (principal -> roles), that the
 * agent consults before running a task submitted by someone else.
 */
import type { Redis } from 'ioredis';
import { AgentError } from '../errors.js';
import { scanKeys } from '../state/scan.js';

/** One parsed authorization: selector and the roles it asks for. */
export interface Authorization {
  selector: string;
  roles: string[];
}

/** A module instance as grant computation sees it. */
export interface GrantInstance {
  id: string;
  node: string;
  /** Entries of `cluster/authorizations/module/<id>`, e.g. `traefik@any:routeadm`. */
  authorizations: readonly string[];
}

/** Everything computeGrants needs. */
export interface GrantInput {
  instances: readonly GrantInstance[];
  /** Roles each agent defines: agent id -> role names (from `<agent>/roles/<role>` keys). */
  agentRoles: Readonly<Record<string, readonly string[]>>;
  /** `cluster/default_instance/<module>` values. */
  clusterDefaults?: Readonly<Record<string, string>>;
  /** `node/<node>/default_instance/<module>` values, by node id. */
  nodeDefaults?: Readonly<Record<string, Readonly<Record<string, string>>>>;
}

/** Grants: principal (`module/<id>`) -> target agent id -> comma-separated role names. */
export type GrantTable = Record<string, Record<string, string>>;

/**
 * Parses an `org.nethserver.authorizations` value (space separated `<selector>:<role>[,<role>]`).
 * Applies NS8's sanity check: no `*`, `[` or `?`, a `:` required, `cluster:owner` refused.
 * Returns the entries and one message per refused entry.
 */
export function parseAuthorizations(label: string): { entries: Authorization[]; errors: string[] } {
  const entries: Authorization[] = [];
  const errors: string[] = [];
  for (const item of label.split(/\s+/).filter(Boolean)) {
    if (/[*[?]/.test(item)) errors.push(`authorization ${JSON.stringify(item)} must not contain "*", "[" or "?"`);
    else if (!item.includes(':')) errors.push(`authorization ${JSON.stringify(item)} must have the form <selector>:<role>[,<role>...]`);
    else if (item === 'cluster:owner') errors.push('authorization "cluster:owner" is not allowed');
    else {
      const at = item.lastIndexOf(':');
      const roles = item.slice(at + 1).split(',').filter(Boolean);
      if (!item.slice(0, at) || roles.length === 0) errors.push(`authorization ${JSON.stringify(item)} needs a selector and at least one role`);
      else entries.push({ selector: item.slice(0, at), roles });
    }
  }
  return { entries, errors };
}

/** The authorizations NS8 stores for an instance: the label's entries plus `self:selfadm`. */
export function authorizationsToStore(label: string): string[] {
  const { entries, errors } = parseAuthorizations(label);
  if (errors.length) throw new AgentError('authorizations_invalid', `org.nethserver.authorizations is invalid: ${errors.join('; ')}`);
  const out = entries.map((e) => `${e.selector}:${e.roles.join(',')}`);
  if (!out.includes('self:selfadm')) out.push('self:selfadm');
  return out;
}

/** Escapes a Go filepath.Match-style glob into a RegExp (`*`, `?`, `[...]`; `/` never matched by wildcards). */
export function globToRegExp(glob: string): RegExp {
  let re = '^';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i] as string;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = glob.indexOf(']', i + 1);
      if (end < 0) re += '\\[';
      else {
        let body = glob.slice(i + 1, end);
        if (body.startsWith('^')) body = '^' + body.slice(1).replace(/[\\\]]/g, '\\$&');
        else body = body.replace(/[\\\]]/g, '\\$&');
        re += `[${body}]`;
        i = end;
      }
    } else if (c === '\\' && i + 1 < glob.length) {
      re += (glob[++i] as string).replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    } else re += c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  }
  return new RegExp(re + '$');
}

/** True when `action` matches one of the glob patterns (`get-*`, `*`). */
export function actionMatches(globs: Iterable<string>, action: string): boolean {
  for (const g of globs) if (globToRegExp(g).test(action)) return true;
  return false;
}

/** Resolves a selector to the agent-id glob it designates, as NS8's add_module_permissions does. */
export function resolveSelector(selector: string, inst: GrantInstance, input: GrantInput): string | undefined {
  if (selector === 'self') return `module/${inst.id}`;
  if (selector === 'node') return `node/${inst.node}`;
  const any = /^(.+)@any$/.exec(selector);
  if (any) return `module/${any[1]}*`;
  const onNode = /^(.+)@node$/.exec(selector);
  if (onNode) {
    const v = input.nodeDefaults?.[inst.node]?.[onNode[1] as string];
    return v ? `module/${v}` : undefined;
  }
  const onCluster = /^(.+)@cluster$/.exec(selector);
  if (onCluster) {
    const v = input.clusterDefaults?.[onCluster[1] as string];
    return v ? `module/${v}` : undefined;
  }
  if (/^\d+$/.test(selector)) return `node/${selector}`;
  if (selector === 'cluster' || selector.startsWith('module/') || selector.startsWith('node/')) return selector;
  return `module/${selector}`;
}

/**
 * Computes the grant table: for each instance and each of its authorizations, every agent whose
 * id matches the resolved selector and that defines the role gets the role granted. Several
 * entries naming the same agent are merged (NS8 keeps the last; merging never loses a grant the
 * label asks for). Pure and deterministic (sorted role lists).
 */
export function computeGrants(input: GrantInput): GrantTable {
  const table: GrantTable = {};
  const agents = Object.keys(input.agentRoles).sort();
  for (const inst of [...input.instances].sort((a, b) => (a.id < b.id ? -1 : 1))) {
    const principal = `module/${inst.id}`;
    const perAgent = new Map<string, Set<string>>();
    for (const raw of inst.authorizations) {
      const { entries } = parseAuthorizations(raw);
      for (const { selector, roles } of entries) {
        const glob = resolveSelector(selector, inst, input);
        if (!glob) continue;
        const re = globToRegExp(glob);
        for (const agent of agents) {
          if (!re.test(agent)) continue;
          const defined = input.agentRoles[agent] ?? [];
          for (const role of roles) {
            if (!defined.includes(role)) continue;
            let set = perAgent.get(agent);
            if (!set) perAgent.set(agent, (set = new Set()));
            set.add(role);
          }
        }
      }
    }
    if (perAgent.size === 0) continue;
    const row: Record<string, string> = {};
    for (const [agent, roles] of [...perAgent.entries()].sort(([a], [b]) => (a < b ? -1 : 1))) row[agent] = [...roles].sort().join(',');
    table[principal] = row;
  }
  return table;
}

/** `module/<id>/grants`: ns8ctl's readable mirror of who holds which roles on `module/<id>`. */
export function grantsMirrorKey(agentId: string): string {
  return `${agentId}/grants`;
}

/** What applyGrants changed. */
export interface ApplyGrantsResult {
  table: GrantTable;
  /** Number of HSET/HDEL/DEL operations written (0 when already converged). */
  writes: number;
}

/**
 * Reads instances (`cluster/module_node`), their authorizations, defined roles and default
 * instances from Redis, computes the grants and converges `roles/module/<id>` hashes to them in one
 * MULTI: adds/changes fields, removes stale ones, drops hashes of removed instances, and removes
 * fields naming removed module agents from every other `roles/*` hash. Then refreshes the
 * `module/<id>/grants` mirrors. Needs an admin connection. Call it after an instance is added
 * (once its create-module defined its roles) or removed.
 */
export async function applyGrants(redis: Redis): Promise<ApplyGrantsResult> {
  const input = await readGrantInput(redis);
  const table = computeGrants(input);
  const current = await readRoleHashes(redis);
  const live = new Set(input.instances.map((i) => `module/${i.id}`));
  const m = redis.multi();
  const { writes: grantWrites, finalState } = queueGrantWrites(m, current, table, live);
  const writes = grantWrites + (await queueMirrorWrites(redis, m, finalState, live));
  if (writes > 0) {
    const replies = await m.exec();
    const failed = replies?.find(([err]) => err);
    if (failed?.[0]) throw failed[0];
  } else m.discard();
  return { table, writes };
}

/** Instances (`cluster/module_node`) with their stored authorizations, the roles each agent defines, and default instances. */
async function readGrantInput(redis: Redis): Promise<GrantInput & { instances: GrantInstance[] }> {
  const moduleNode = await redis.hgetall('cluster/module_node');
  const ids = Object.keys(moduleNode).sort();
  const authPipe = redis.pipeline();
  for (const id of ids) authPipe.smembers(`cluster/authorizations/module/${id}`);
  const authReplies = (await authPipe.exec()) ?? [];
  const instances: GrantInstance[] = ids.map((id, i) => ({ id, node: moduleNode[id] ?? '', authorizations: ((authReplies[i]?.[1] as string[] | undefined) ?? []).slice().sort() }));
  const agentRoles: Record<string, string[]> = {};
  for (const key of await scanKeys(redis, '*/roles/*')) {
    const m = /^((?:module\/[^/]+)|(?:node\/[^/]+)|cluster)\/roles\/([^/]+)$/.exec(key);
    if (!m) continue;
    (agentRoles[m[1] as string] ??= []).push(m[2] as string);
  }
  return { instances, agentRoles, ...(await readDefaultInstances(redis)) };
}

/** `cluster/default_instance/<module>` and `node/<N>/default_instance/<module>` values. */
async function readDefaultInstances(redis: Redis): Promise<{ clusterDefaults: Record<string, string>; nodeDefaults: Record<string, Record<string, string>> }> {
  const clusterDefaults: Record<string, string> = {};
  const nodeDefaults: Record<string, Record<string, string>> = {};
  const defaultKeys = [...(await scanKeys(redis, 'cluster/default_instance/*')), ...(await scanKeys(redis, 'node/*/default_instance/*'))];
  if (defaultKeys.length) {
    const values = await redis.mget(...defaultKeys);
    defaultKeys.forEach((k, i) => {
      const v = values[i];
      if (!v) return;
      const c = /^cluster\/default_instance\/(.+)$/.exec(k);
      if (c) clusterDefaults[c[1] as string] = v;
      const n = /^node\/([^/]+)\/default_instance\/(.+)$/.exec(k);
      if (n) (nodeDefaults[n[1] as string] ??= {})[n[2] as string] = v;
    });
  }
  return { clusterDefaults, nodeDefaults };
}

/** Current state of every `roles/*` hash. */
async function readRoleHashes(redis: Redis): Promise<Map<string, Record<string, string>>> {
  const roleKeys = await scanKeys(redis, 'roles/*');
  const readPipe = redis.pipeline();
  for (const k of roleKeys) readPipe.hgetall(k);
  const current = new Map<string, Record<string, string>>();
  ((await readPipe.exec()) ?? []).forEach(([, v], i) => current.set(roleKeys[i] as string, (v as Record<string, string>) ?? {}));
  return current;
}

type Multi = ReturnType<Redis['multi']>;

/**
 * Queues on `m` the writes that make every `roles/module/<id>` hash equal its row of `table`
 * (dropping hashes of removed instances), and remove grants on removed module agents from every
 * other `roles/*` hash. Returns the number of writes and every hash as it will be.
 */
function queueGrantWrites(m: Multi, current: ReadonlyMap<string, Record<string, string>>, table: GrantTable, live: ReadonlySet<string>): { writes: number; finalState: Map<string, Record<string, string>> } {
  let writes = 0;
  const finalState = new Map<string, Record<string, string>>();
  for (const [key, fields] of current) {
    const principal = key.slice('roles/'.length);
    if (principal.startsWith('module/')) {
      const want = table[principal] ?? {};
      if (!live.has(principal) || Object.keys(want).length === 0) {
        m.del(key);
        writes++;
        continue;
      }
      writes += queueHashDiff(m, key, fields, want);
      finalState.set(key, want);
    } else {
      // A user's (or another agent's) roles: drop grants on module agents that no longer exist.
      const keep: Record<string, string> = {};
      for (const [f, v] of Object.entries(fields)) {
        if (f.startsWith('module/') && !live.has(f)) {
          m.hdel(key, f);
          writes++;
        } else keep[f] = v;
      }
      finalState.set(key, keep);
    }
  }
  for (const [principal, want] of Object.entries(table)) {
    const key = `roles/${principal}`;
    if (current.has(key)) continue;
    m.hset(key, want);
    writes++;
    finalState.set(key, want);
  }
  return { writes, finalState };
}

/** Queues the HDEL/HSET that turn hash `key` from `have` into `want`; returns how many. */
function queueHashDiff(m: Multi, key: string, have: Record<string, string>, want: Record<string, string>): number {
  let writes = 0;
  for (const f of Object.keys(have)) {
    if (f in want) continue;
    m.hdel(key, f);
    writes++;
  }
  for (const [f, v] of Object.entries(want)) {
    if (have[f] === v) continue;
    m.hset(key, f, v);
    writes++;
  }
  return writes;
}

/** Queues on `m` the rewrite of each live module agent's `grants` mirror that differs from `finalState`; returns how many. */
async function queueMirrorWrites(redis: Redis, m: Multi, finalState: ReadonlyMap<string, Record<string, string>>, live: ReadonlySet<string>): Promise<number> {
  // For each live module agent, who holds which roles on it.
  const mirrors = new Map<string, Record<string, string>>();
  for (const agent of live) mirrors.set(agent, {});
  for (const [key, fields] of finalState) {
    const principal = key.slice('roles/'.length);
    for (const [agent, roles] of Object.entries(fields)) {
      const mirror = mirrors.get(agent);
      if (mirror) mirror[principal] = roles;
    }
  }
  const mirrorPipe = redis.pipeline();
  const agentsOrdered = [...mirrors.keys()].sort();
  for (const agent of agentsOrdered) mirrorPipe.hgetall(grantsMirrorKey(agent));
  const mirrorNow = (await mirrorPipe.exec()) ?? [];
  let writes = 0;
  agentsOrdered.forEach((agent, i) => {
    const want = mirrors.get(agent) ?? {};
    const have = (mirrorNow[i]?.[1] as Record<string, string> | undefined) ?? {};
    if (JSON.stringify(Object.entries(want).sort()) === JSON.stringify(Object.entries(have).sort())) return;
    m.del(grantsMirrorKey(agent));
    if (Object.keys(want).length) m.hset(grantsMirrorKey(agent), want);
    writes++;
  });
  return writes;
}

/** Result of a permission check. */
export type PermissionDecision = { allowed: true } | { allowed: false; reason: string };

/** NS8's unprivileged-caller error text, as allocate-ports and friends print it. */
export const PERMISSION_DENIED_ERROR = 'module_permission_denied';
/** Exit code NS8 uses for `module_permission_denied`. */
export const PERMISSION_DENIED_EXIT_CODE = 32;

/**
 * Where a permission check reads the role names a user holds on an agent. Both name the same
 * grants (applyGrants writes them together); they differ in who can read them:
 * - `grants-mirror`: field `<user>` of `<agent>/grants`, the mirror applyGrants keeps for each
 *   module agent, readable by that module's own agent (NS8's ACL hides `roles/*` from it);
 * - `roles`: field `<agent>` of `roles/<user>`, the hash NS8 itself keeps, readable with admin
 *   credentials only; the one to use for node and cluster agents, which have no mirror.
 */
export type RoleSource = 'grants-mirror' | 'roles';

/** The Redis reads a permission check makes (an ioredis client satisfies it). */
export interface PermissionStore {
  hget(key: string, field: string): Promise<string | null>;
  smembers(key: string): Promise<string[]>;
}

/** The role names `user` holds on `agentId`, read from `source`. */
async function heldRoles(store: PermissionStore, agentId: string, user: string, source: RoleSource): Promise<string[]> {
  const roles = source === 'grants-mirror' ? await store.hget(grantsMirrorKey(agentId), user) : await store.hget(`roles/${user}`, agentId);
  return (roles ?? '').split(',').filter(Boolean);
}

/**
 * Decides whether `user` may run `action` on `agentId`. An empty user or `cluster` is the
 * privileged submitter (NS8's empty AGENT_TASK_USER) and is always allowed. Anyone else needs a
 * role on the agent (its names read from `source`, see RoleSource) whose `<agent>/roles/<role>`
 * SET holds a glob matching the action. A denial's reason names the user, the roles it holds and
 * the action. An error reading the role names is thrown; an unreadable role SET allows nothing.
 */
export async function checkTaskPermission(store: PermissionStore, agentId: string, user: string | undefined, action: string, source: RoleSource = 'grants-mirror'): Promise<PermissionDecision> {
  if (!user || user === 'cluster') return { allowed: true };
  const names = await heldRoles(store, agentId, user, source);
  if (names.length === 0) return { allowed: false, reason: `${user} holds no role on ${agentId}` };
  // A role SET that cannot be read grants nothing: the check fails closed.
  const globs = (await Promise.all(names.map((r) => store.smembers(`${agentId}/roles/${r}`).catch((): string[] => [])))).flat();
  if (actionMatches(globs, action)) return { allowed: true };
  return { allowed: false, reason: `${user} holds role${names.length > 1 ? 's' : ''} ${names.join(',')} on ${agentId}, which do${names.length > 1 ? '' : 'es'} not allow action ${action}` };
}
