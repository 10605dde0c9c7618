import { AgentError } from '../errors.js';

/**
 * Names that become path components (actions, steps, event names) are limited to letters, digits,
 * `.`, `_` and `-`, must not start with `.` and are at most 128 characters: no `/`, no `..`, no
 * hidden files, so a crafted task or event cannot reach outside its action directory.
 */
const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

/** NS8 instance ids: a Unix user name of the `<module><N>` form, at most 32 characters. */
const INSTANCE_ID = /^[a-z][a-z0-9_-]{0,30}[0-9]$/;

/** Task ids become Redis key parts (`task/<agent>/<id>/...`): uuid-like, no `/`. */
const TASK_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** True when `name` can safely be used as one path component for an action, step or event. */
export function isSafeName(name: string): boolean {
  return SAFE_NAME.test(name);
}

/** Throws when `name` is not a valid action name; `what` says where it came from. */
export function assertActionName(name: unknown, what = 'action name'): string {
  if (typeof name !== 'string' || !isSafeName(name)) {
    throw new AgentError('action_name_invalid', `${what} ${JSON.stringify(name)} is not valid: use letters, digits, ".", "_" and "-", not starting with "." (max 128)`);
  }
  return name;
}

/** True for an NS8 instance id such as `dokuwiki1`. */
export function isInstanceId(id: string): boolean {
  return INSTANCE_ID.test(id);
}

/** Throws unless `id` is an NS8 instance id (`dokuwiki1`). */
export function assertInstanceId(id: string): string {
  if (!isInstanceId(id)) {
    throw new AgentError('instance_id_invalid', `instance id ${JSON.stringify(id)} is not valid: expected <module><N>, e.g. dokuwiki1 (lowercase, max 32 characters)`);
  }
  return id;
}

/** True when `id` may be used as a task id (a key part with no `/`). */
export function isTaskId(id: unknown): id is string {
  return typeof id === 'string' && TASK_ID.test(id);
}

/** `dokuwiki1` -> `module/dokuwiki1` (the agent id, also the Redis ACL user). */
export function agentIdOf(instanceId: string): string {
  return `module/${instanceId}`;
}

/** `module/dokuwiki1` -> `dokuwiki1`; undefined for `cluster`, `node/1`, ... */
export function instanceIdOfAgent(agentId: string): string | undefined {
  const m = /^module\/([^/]+)$/.exec(agentId);
  return m?.[1];
}

/** Splits an event channel `<source>/event/<name>`; undefined when the channel has another shape or an unsafe name. */
export function parseEventChannel(channel: string): { source: string; name: string } | undefined {
  const at = channel.lastIndexOf('/event/');
  if (at <= 0) return undefined;
  const source = channel.slice(0, at);
  const name = channel.slice(at + '/event/'.length);
  if (!isSafeName(name)) return undefined;
  return { source, name };
}
