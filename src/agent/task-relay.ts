/**
 * The task relay: how a module instance submits a task to another agent under NS8's module ACL.
 *
 * A module user may write only `module/<self>/*` and `task/module/<self>/*`, cannot read other
 * agents' `task/...` keys and cannot SUBSCRIBE. NS8 routes module-to-module tasks through its
 * privileged api-server, which authenticates the caller and stamps `task.user`; ns8ctl does the
 * same with this relay, run by the controller leader with admin credentials:
 *
 * 1. the module LPUSHes a request `{id, agent_id, action, data, extra, parent}` on
 *    `module/<self>/relay/tasks` (its own key: its ACL allows it, and nobody else can write it);
 * 2. the relay BLPOPs those queues for every instance in `cluster/module_node` (refreshed, rotated
 *    so that no module starves the others), validates the request, stamps `user = module/<self>`
 *    from the KEY it came from (a `user` in the payload is ignored), records it in
 *    `ns8ctl/relay/inflight` and LPUSHes the NS8 task on `<agent_id>/tasks`;
 * 3. the target agent checks the submitter's roles and runs the task as usual;
 * 4. the relay follows `progress/<agent_id>/task/<id>`, republishes every message on
 *    `progress/module/<self>/relay/<id>` (readable with NS8's `default` user), and when the task
 *    has a result copies output, error and exit_code to `task/module/<self>/relay/<id>/...`
 *    (readable by the submitter only, 8 h expiry) and publishes the final status there.
 *
 * Refusals are answered in the submitter's result keys, never in someone else's: malformed
 * fields and unknown agents end `validation-failed` (10) with NS8's validation output
 * `[{parameter, error, value, field}]`; a module holding no role allowing the action on a node or
 * cluster agent (which do not check roles themselves) gets NS8's `module_permission_denied` (32);
 * more than `maxInFlight` relayed tasks gets `Relay is busy` (11). Requests that are not JSON
 * objects or have no valid `id` cannot be answered: they are logged and dropped.
 * Delivery is at most once, like NS8's own queues.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { checkTaskPermission, PERMISSION_DENIED_ERROR, PERMISSION_DENIED_EXIT_CODE } from './authorizations.js';
import { AgentError } from '../errors.js';
import { isInstanceId, isSafeName, isTaskId } from './names.js';
import { progressChannel, progressMessage, taskKey, taskQueueKey, TASK_TTL_SECONDS, type TaskResult, type TaskStatus } from './task-store.js';

/** `module/<id>/relay/tasks`: the LIST a module LPUSHes its relay requests on. */
export function relayQueueKey(instanceId: string): string {
  return `module/${instanceId}/relay/tasks`;
}

/** `task/module/<id>/relay/<task>/<part>`: the relayed task's result, copied where only the submitter (and admins) can read it. */
export function relayResultKey(instanceId: string, taskId: string, part: 'output' | 'error' | 'exit_code'): string {
  return `task/module/${instanceId}/relay/${taskId}/${part}`;
}

/** `progress/module/<id>/relay/<task>`: the relayed task's progress messages, then its final status once the result is copied. */
export function relayProgressChannel(instanceId: string, taskId: string): string {
  return `progress/module/${instanceId}/relay/${taskId}`;
}

/** HASH of the tasks the relay forwarded and still waits for: field `<sender>/<task id>`, value JSON. */
export const RELAY_INFLIGHT_KEY = 'ns8ctl/relay/inflight';

/** Exit code and error NS8's agent uses when it is overloaded; the relay uses them when it is. */
export const RELAY_BUSY_EXIT_CODE = 11;

/** A valid relay request, as forwarded. */
export interface RelayRequest {
  id: string;
  /** Target agent: `module/<id>`, `node/<N>` or `cluster`. */
  agent_id: string;
  action: string;
  data: unknown;
  extra: Record<string, unknown>;
  parent: string;
}

/** One problem with a request, in NS8's validation output shape. */
export interface RelayProblem {
  parameter: string;
  error: string;
  value: unknown;
  field: string;
}

/** The outcome of parseRelayRequest. `id` is set when the request can be answered. */
export type RelayParse =
  | { ok: true; request: RelayRequest; forgedUser: boolean }
  | { ok: false; id?: string; problems: RelayProblem[]; message: string };

/** True for an agent id a task may be relayed to: `module/<instance id>`, `node/<N>`, `cluster`. */
export function isRelayTarget(agentId: unknown): agentId is string {
  if (typeof agentId !== 'string') return false;
  if (agentId === 'cluster' || /^node\/[1-9][0-9]{0,8}$/.test(agentId)) return true;
  const m = /^module\/(.+)$/.exec(agentId);
  return m !== null && isInstanceId(m[1] as string);
}

const shown = (v: unknown): unknown => (typeof v === 'string' && v.length > 128 ? v.slice(0, 128) + '…' : v === undefined ? null : v);

function problem(parameter: string, error: string, value: unknown): RelayProblem {
  return { parameter, error, value: shown(value), field: parameter };
}

/** Default cap on a request's size (bytes). */
export const RELAY_MAX_PAYLOAD_BYTES = 4 * 1024 * 1024;

/**
 * Validates one raw relay request (pure). Checks: a JSON object of at most `maxBytes`; `id` a task
 * id; `agent_id` a relay target; `action` a safe action name; `extra` an object when given;
 * `parent` empty or a task id. `data` may be any JSON value (default `{}`). Unknown fields are
 * dropped; a `user` field is reported as `forgedUser` and never used.
 */
export function parseRelayRequest(raw: string, opts: { maxBytes?: number } = {}): RelayParse {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw) as unknown;
  } catch (err) {
    return { ok: false, problems: [problem('', 'task_invalid_json', null)], message: `not JSON: ${(err as Error).message}` };
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) return { ok: false, problems: [problem('', 'task_invalid_type', null)], message: 'not a JSON object' };
  const o = parsed as Record<string, unknown>;
  if (!isTaskId(o['id'])) return { ok: false, problems: [problem('id', o['id'] === undefined ? 'id_required' : 'id_invalid', o['id'])], message: '"id" must be a string of letters, digits, ".", "_", "-"' };
  const id = o['id'];
  const problems: RelayProblem[] = [];
  const max = opts.maxBytes ?? RELAY_MAX_PAYLOAD_BYTES;
  if (Buffer.byteLength(raw) > max) problems.push(problem('', 'task_too_large', `${Buffer.byteLength(raw)} bytes`));
  const agentId = o['agent_id'];
  if (agentId === undefined) problems.push(problem('agent_id', 'agent_id_required', null));
  else if (!isRelayTarget(agentId)) problems.push(problem('agent_id', 'agent_id_invalid', agentId));
  const action = o['action'];
  if (action === undefined) problems.push(problem('action', 'action_required', null));
  else if (typeof action !== 'string' || !isSafeName(action)) problems.push(problem('action', 'action_invalid', action));
  const extra = o['extra'] ?? {};
  if (!extra || typeof extra !== 'object' || Array.isArray(extra)) problems.push(problem('extra', 'extra_invalid_type', o['extra']));
  const parent = o['parent'] ?? '';
  if (parent !== '' && !isTaskId(parent)) problems.push(problem('parent', 'parent_invalid', parent));
  if (problems.length) {
    const message = problems.map((p) => (p.parameter ? `${p.parameter}: ${p.error}` : p.error)).join(', ');
    return { ok: false, id, problems, message };
  }
  const request: RelayRequest = { id, agent_id: agentId as string, action: action as string, data: o['data'] ?? {}, extra: extra as Record<string, unknown>, parent: parent as string };
  return { ok: true, request, forgedUser: o['user'] !== undefined };
}

/** What a module passes to buildRelayRequest. */
export interface RelayRequestOptions {
  data?: unknown;
  /** An object (NS8: e.g. `{title}`); anything else is refused. */
  extra?: unknown;
  parent?: string;
  /** Task id (default: a new uuid). */
  id?: string;
}

/**
 * Builds the JSON a module LPUSHes on its relay queue, checked with parseRelayRequest so a bad
 * agent id or action is refused here (AgentError `relay_request_invalid`) rather than by the relay.
 */
export function buildRelayRequest(agentId: string, action: string, opts: RelayRequestOptions = {}): { id: string; json: string } {
  const id = opts.id ?? randomUUID();
  const json = JSON.stringify({ id, agent_id: agentId, action, data: opts.data ?? {}, extra: opts.extra ?? {}, parent: opts.parent ?? '' });
  const parsed = parseRelayRequest(json);
  if (!parsed.ok) {
    throw new AgentError('relay_request_invalid', `task ${JSON.stringify(action)} for ${JSON.stringify(agentId)} cannot be relayed: ${parsed.message} (agent id: module/<instance>, node/<N> or cluster; action: letters, digits, ".", "_", "-")`);
  }
  return { id, json };
}

/** Relay settings; every field has a default. */
export interface TaskRelayOptions {
  /** Relay log (default: stderr). Never receives task data. */
  log?: (line: string) => void;
  /** BLPOP timeout in seconds (default 1). */
  blockSeconds?: number;
  /** How often the instance list and the in-flight record are re-read (default 5000 ms). */
  refreshMs?: number;
  /** How often in-flight tasks' results are checked, in case a progress message was missed (default 2000 ms). */
  pollMs?: number;
  /** Relayed tasks waiting for a result at once; more are refused as busy (default 1024). */
  maxInFlight?: number;
  /** Largest request accepted, in bytes (default 4 MiB). */
  maxPayloadBytes?: number;
  /** A forwarded task with no result after this long ends aborted for its submitter (default 8 h). */
  maxAgeMs?: number;
  /** stop() waits this long for a request being handled, then closes the connections (default 5000 ms). */
  stopTimeoutMs?: number;
  /** Aborting it stops the relay. */
  signal?: AbortSignal;
}

/** A running relay. */
export interface TaskRelay {
  /** Resolves once the relay listens on every instance's queue (or once it is stopped). */
  readonly ready: Promise<void>;
  /** Stops popping, waits (bounded) for the request being handled, closes the relay's connections. Idempotent. */
  stop(): Promise<void>;
  /** Relayed tasks still waiting for their result. */
  inFlight(): number;
}

interface InFlight {
  sender: string;
  target: string;
  id: string;
  action: string;
  since: number;
  finalStatus?: TaskStatus;
  completing?: boolean;
}

const FINAL: readonly string[] = ['completed', 'aborted', 'validation-failed'];
const CONNECTION_NAME = 'ns8ctl-task-relay';

function statusOf(exitCode: number): TaskStatus {
  return exitCode === 0 ? 'completed' : exitCode === 10 ? 'validation-failed' : 'aborted';
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
  });
}

/**
 * Starts the relay on duplicates of `redis` (an admin connection: it must read `cluster/*` and
 * `roles/*`, BLPOP every `module/<id>/relay/tasks`, write any agent's queue and `task/...` keys,
 * SUBSCRIBE and PUBLISH). The relay opens three connections of its own (`ns8ctl-task-relay*` in
 * CLIENT LIST) that reconnect forever with capped backoff, so a Redis restart or a killed
 * connection only delays it; errors are logged once per distinct message and retried. In-flight
 * tasks are kept in Redis, so a relay started later (a new controller leader) finishes them.
 * Run one per cluster (the controller leader); two at once are harmless (each request is popped once).
 */
export function startTaskRelay(redis: Redis, opts: TaskRelayOptions = {}): TaskRelay {
  const relay = new Relay(redis, relaySettings(opts));
  relay.start();
  if (opts.signal) {
    if (opts.signal.aborted) void relay.stop();
    else opts.signal.addEventListener('abort', () => void relay.stop(), { once: true });
  }
  return { ready: relay.ready, stop: () => relay.stop(), inFlight: () => relay.inflight.size };
}

/** TaskRelayOptions with every default applied. */
interface RelaySettings {
  log: (line: string) => void;
  blockSeconds: number;
  refreshMs: number;
  pollMs: number;
  maxInFlight: number;
  maxPayloadBytes: number | undefined;
  maxAgeMs: number;
  stopTimeoutMs: number;
}

function relaySettings(opts: TaskRelayOptions): RelaySettings {
  return {
    log: opts.log ?? ((line: string) => process.stderr.write(line + '\n')),
    blockSeconds: opts.blockSeconds ?? 1,
    refreshMs: opts.refreshMs ?? 5000,
    pollMs: opts.pollMs ?? 2000,
    maxInFlight: opts.maxInFlight ?? 1024,
    maxPayloadBytes: opts.maxPayloadBytes,
    maxAgeMs: opts.maxAgeMs ?? TASK_TTL_SECONDS * 1000,
    stopTimeoutMs: opts.stopTimeoutMs ?? 5000,
  };
}

/** A duplicate of `redis` named `ns8ctl-task-relay<suffix>` that reconnects forever with capped backoff. */
function connectRelay(redis: Redis, suffix: string): Redis {
  const c = redis.duplicate({
    connectionName: CONNECTION_NAME + suffix,
    maxRetriesPerRequest: null,
    enableOfflineQueue: true,
    retryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times, 6), 5000),
  });
  c.on('error', () => undefined); // reported through the command that fails
  return c;
}

/** The HASH field (and in-memory key) of a relayed task: `<sender>/<id>`. */
function inflightField(sender: string, id: string): string {
  return `${sender}/${id}`;
}

/** The answer to a request refused as invalid: NS8's validation-failed with its problems as output. */
function invalidResult(problems: RelayProblem[], message: string): TaskResult {
  return { status: 'validation-failed', exitCode: 10, output: JSON.stringify(problems), error: `task relay: ${message}\n` };
}

/** An entry of RELAY_INFLIGHT_KEY read back, or undefined when it is malformed or filed under another field. */
function parseInflightEntry(f: string, json: string): InFlight | undefined {
  try {
    const e = JSON.parse(json) as Partial<InFlight>;
    if (typeof e.sender !== 'string' || !isRelayTarget(e.target) || !isTaskId(e.id) || inflightField(e.sender, e.id) !== f) return undefined;
    return { sender: e.sender, target: e.target, id: e.id, action: typeof e.action === 'string' ? e.action : '?', since: typeof e.since === 'number' ? e.since : Date.now() };
  } catch {
    return undefined;
  }
}

/** Why a well-formed request is not forwarded: the submitter's answer and a line for the log. */
interface Refusal {
  result: TaskResult;
  why: string;
}

/** The running relay: its connections, the tasks it follows, its two loops. */
class Relay {
  readonly inflight = new Map<string, InFlight>(); // `<sender>/<id>` -> entry
  readonly ready: Promise<void>;
  private readonly cmd: Redis;
  private readonly blocking: Redis;
  private readonly sub: Redis;
  private readonly log: (line: string) => void;
  private readonly byChannel = new Map<string, string>(); // progress channel -> field
  private readonly errors = new Map<string, string>();
  private readonly abort = new AbortController();
  private queues: string[] = [];
  private rotation = 0;
  private resolveReady!: () => void;
  private loopsDone: Promise<unknown> = Promise.resolve();
  private stopped: Promise<void> | undefined;

  constructor(
    redis: Redis,
    private readonly settings: RelaySettings,
  ) {
    this.log = settings.log;
    this.cmd = connectRelay(redis, '');
    this.blocking = connectRelay(redis, '-pop');
    this.sub = connectRelay(redis, '-sub');
    this.ready = new Promise<void>((r) => (this.resolveReady = r));
  }

  /** Starts following progress messages and the maintenance and pop loops. */
  start(): void {
    this.sub.on('message', (channel: string, message: string) => this.onProgress(channel, message));
    const maintainDone = this.maintain().catch((err: unknown) => this.report('maintenance loop', err));
    const popDone = this.pop().catch((err: unknown) => this.report('pop loop', err));
    this.loopsDone = Promise.all([maintainDone, popDone]);
    this.log(`task-relay: started; relays module/<id>/relay/tasks to <agent_id>/tasks`);
  }

  /** Stops the loops, waits for them (bounded by stopTimeoutMs), closes the connections. Idempotent. */
  stop(): Promise<void> {
    this.stopped ??= (async () => {
      this.abort.abort();
      this.resolveReady();
      this.blocking.disconnect(); // ends the pending BLPOP at once
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.loopsDone, new Promise<void>((r) => (timer = setTimeout(r, this.settings.stopTimeoutMs)))]);
      clearTimeout(timer);
      this.sub.disconnect();
      this.cmd.disconnect();
      this.log('task-relay: stopped');
    })();
    return this.stopped;
  }

  /** Logs an error once per distinct message and place. */
  private report(where: string, err: unknown): void {
    const msg = (err as Error).message;
    if (this.errors.get(where) !== msg) this.log(`error: task-relay: ${where}: ${msg}`);
    this.errors.set(where, msg);
  }

  private recovered(where: string): void {
    if (this.errors.delete(where)) this.log(`task-relay: ${where}: working again`);
  }

  /** Writes a result for the submitter and publishes its final status, in one MULTI (dropping the in-flight record too, when given). */
  private async answer(sender: string, id: string, result: TaskResult, progress: number, field?: string): Promise<void> {
    const m = this.cmd.multi();
    m.set(relayResultKey(sender, id, 'output'), result.output, 'EX', TASK_TTL_SECONDS);
    m.set(relayResultKey(sender, id, 'error'), result.error, 'EX', TASK_TTL_SECONDS);
    m.set(relayResultKey(sender, id, 'exit_code'), String(result.exitCode), 'EX', TASK_TTL_SECONDS);
    if (field !== undefined) m.hdel(RELAY_INFLIGHT_KEY, field);
    m.publish(relayProgressChannel(sender, id), progressMessage(result.status, progress));
    const replies = await m.exec();
    const failed = replies?.find(([err]) => err);
    if (failed?.[0]) throw failed[0];
  }

  private async refuse(sender: string, id: string, target: string, action: string, result: TaskResult, why: string): Promise<void> {
    this.log(`warning: task-relay: module/${sender} -> ${target} ${action} (task ${id}) refused: ${why}`);
    await this.answer(sender, id, result, 0);
  }

  private async track(entry: InFlight): Promise<void> {
    const f = inflightField(entry.sender, entry.id);
    this.inflight.set(f, entry);
    const channel = progressChannel(entry.target, entry.id);
    this.byChannel.set(channel, f);
    await this.sub.subscribe(channel);
  }

  private async untrack(f: string): Promise<void> {
    const entry = this.inflight.get(f);
    if (!entry) return;
    this.inflight.delete(f);
    const channel = progressChannel(entry.target, entry.id);
    this.byChannel.delete(channel);
    await this.sub.unsubscribe(channel).catch(() => undefined);
  }

  /** Runs `finish` for an entry unless it is already being finished; `finish` ends by untracking it. */
  private async finishOnce(entry: InFlight, finish: () => Promise<void>): Promise<void> {
    if (entry.completing) return;
    entry.completing = true;
    try {
      await finish();
    } finally {
      entry.completing = false;
    }
  }

  /** Copies the target's result to the submitter, once it has one. */
  private complete(entry: InFlight): Promise<void> {
    return this.finishOnce(entry, async () => {
      const [output, error, code] = await this.cmd.mget(taskKey(entry.target, entry.id, 'output'), taskKey(entry.target, entry.id, 'error'), taskKey(entry.target, entry.id, 'exit_code'));
      if (code === null || code === undefined) return;
      const exitCode = Number(code);
      const f = inflightField(entry.sender, entry.id);
      await this.answer(entry.sender, entry.id, { status: entry.finalStatus ?? statusOf(exitCode), exitCode, output: output ?? '', error: error ?? '' }, 100, f);
      await this.untrack(f);
    });
  }

  /** Ends a task that had no result for maxAgeMs as aborted for its submitter. */
  private giveUp(entry: InFlight): Promise<void> {
    return this.finishOnce(entry, async () => {
      const hours = Math.round(this.settings.maxAgeMs / 360_000) / 10;
      const error = `task relay: no result from ${entry.target} for task ${entry.id} after ${hours} h (is its agent running? it reads ${taskQueueKey(entry.target)})\n`;
      this.log(`warning: task-relay: module/${entry.sender} -> ${entry.target} ${entry.action} (task ${entry.id}): no result after ${hours} h, given up`);
      const f = inflightField(entry.sender, entry.id);
      await this.answer(entry.sender, entry.id, { status: 'aborted', exitCode: 1, output: '', error }, 0, f);
      await this.untrack(f);
    });
  }

  /** A progress message of a relayed task: republished to the submitter, or, when final, the result is copied. */
  private onProgress(channel: string, message: string): void {
    const f = this.byChannel.get(channel);
    const entry = f ? this.inflight.get(f) : undefined;
    if (!entry) return;
    let status: string | undefined;
    try {
      status = (JSON.parse(message) as { status?: string }).status;
    } catch {
      return; // not a progress message
    }
    if (status !== undefined && FINAL.includes(status)) {
      entry.finalStatus = status as TaskStatus;
      this.complete(entry).catch((err: unknown) => this.report('copy result', err));
    } else {
      this.cmd.publish(relayProgressChannel(entry.sender, entry.id), message).catch((err: unknown) => this.report('republish progress', err));
    }
  }

  /** Handles one popped request: drop, refuse (answered to the submitter) or forward. */
  private async handle(queue: string, raw: string): Promise<void> {
    const sender = /^module\/([^/]+)\/relay\/tasks$/.exec(queue)?.[1];
    if (!sender) return;
    const max = this.settings.maxPayloadBytes;
    const parsed = parseRelayRequest(raw, max !== undefined ? { maxBytes: max } : {});
    const id = parsed.ok ? parsed.request.id : parsed.id;
    if (id === undefined) {
      this.log(`warning: task-relay: request from module/${sender} dropped (no answer possible): ${parsed.ok ? '' : parsed.message}`);
      return;
    }
    if (await this.senderReusesId(sender, id)) {
      this.log(`warning: task-relay: request ${id} from module/${sender} dropped: module/${sender} already used that task id`);
      return;
    }
    if (!parsed.ok) {
      await this.refuse(sender, id, '?', '?', invalidResult(parsed.problems, parsed.message), parsed.message);
      return;
    }
    const { request } = parsed;
    if (parsed.forgedUser) this.log(`warning: task-relay: request ${id} from module/${sender} carries a "user" field: ignored, the task runs as module/${sender}`);
    const refusal = await this.refusalFor(sender, request);
    if (refusal) await this.refuse(sender, id, request.agent_id, request.action, refusal.result, refusal.why);
    else await this.forward(sender, request);
  }

  /** The sender reusing one of its own ids: the pending or stored answer stands (never overwritten). */
  private async senderReusesId(sender: string, id: string): Promise<boolean> {
    const f = inflightField(sender, id);
    return this.inflight.has(f) || (await this.cmd.exists(relayResultKey(sender, id, 'exit_code'))) > 0 || (await this.cmd.hexists(RELAY_INFLIGHT_KEY, f)) === 1;
  }

  /** Why a well-formed request must not be forwarded, checked in order: id taken on the target, unknown instance or missing role, relay busy. */
  private async refusalFor(sender: string, request: RelayRequest): Promise<Refusal | undefined> {
    const { id, agent_id: target, action } = request;
    // An id already used on the target by someone else: its keys are not ours to touch.
    if ((await this.cmd.exists(taskKey(target, id, 'context'), taskKey(target, id, 'exit_code'))) > 0 || [...this.inflight.values()].some((e) => e.target === target && e.id === id)) {
      const problems = [problem('id', 'id_already_used', id)];
      return { result: invalidResult(problems, `task id ${id} is already used on ${target}: use a new id (a uuid)`), why: 'task id already used on the target' };
    }
    const targetInstance = /^module\/(.+)$/.exec(target)?.[1];
    if (targetInstance !== undefined) {
      if (!(await this.cmd.hexists('cluster/module_node', targetInstance))) {
        const problems = [problem('agent_id', 'agent_id_not_found', target)];
        return { result: invalidResult(problems, `no instance ${targetInstance} in cluster/module_node`), why: 'no such instance' };
      }
    } else {
      // Node and cluster agents do not check roles (NS8's api-server does): the relay checks them, as the api-server would.
      const decision = await checkTaskPermission(this.cmd, target, `module/${sender}`, action, 'roles');
      if (!decision.allowed) return { result: { status: 'aborted', exitCode: PERMISSION_DENIED_EXIT_CODE, output: '', error: `${PERMISSION_DENIED_ERROR}: ${decision.reason}\n` }, why: decision.reason };
    }
    const { maxInFlight } = this.settings;
    if (this.inflight.size >= maxInFlight) {
      return { result: { status: 'aborted', exitCode: RELAY_BUSY_EXIT_CODE, output: '', error: `Relay is busy (${this.inflight.size} relayed tasks waiting for a result, limit ${maxInFlight})\n` }, why: 'relay busy' };
    }
    return undefined;
  }

  /** Records the task in flight, follows its progress, then pushes it on the target's queue as `module/<sender>`. */
  private async forward(sender: string, request: RelayRequest): Promise<void> {
    const { id, agent_id: target, action } = request;
    const f = inflightField(sender, id);
    const entry: InFlight = { sender, target, id, action, since: Date.now() };
    const task = JSON.stringify({ id, action, data: request.data, extra: request.extra, parent: request.parent, user: `module/${sender}`, timestamp: new Date().toISOString() });
    // Recorded and subscribed before the push, so even an instant result is not missed.
    await this.cmd.hset(RELAY_INFLIGHT_KEY, f, JSON.stringify({ sender, target, id, action, since: entry.since }));
    await this.track(entry);
    try {
      await this.cmd.lpush(taskQueueKey(target), task);
    } catch (err) {
      await this.cmd.hdel(RELAY_INFLIGHT_KEY, f).catch(() => undefined);
      await this.untrack(f);
      throw err;
    }
    this.log(`task-relay: module/${sender} -> ${target} ${action} (task ${id}) forwarded`);
  }

  /** Re-reads the instance list and the shared in-flight record (another relay may have added or finished some). */
  private async refresh(): Promise<void> {
    const startedAt = Date.now();
    const ids = (await this.cmd.hkeys('cluster/module_node')).filter(isInstanceId).sort();
    this.queues = ids.map(relayQueueKey);
    const stored = await this.cmd.hgetall(RELAY_INFLIGHT_KEY);
    for (const [f, json] of Object.entries(stored)) {
      if (this.inflight.has(f)) continue;
      const entry = parseInflightEntry(f, json);
      if (entry) await this.trackStored(f, entry);
      else await this.dropStored(f);
    }
    // Gone from the record: finished by another relay (entries forwarded since the read are kept).
    for (const [f, e] of [...this.inflight]) if (!(f in stored) && !e.completing && e.since < startedAt) await this.untrack(f);
  }

  private async trackStored(f: string, entry: InFlight): Promise<void> {
    try {
      await this.track(entry);
    } catch {
      await this.dropStored(f);
    }
  }

  private async dropStored(f: string): Promise<void> {
    this.log(`warning: task-relay: dropping a malformed ${RELAY_INFLIGHT_KEY} entry ${JSON.stringify(f)}`);
    await this.cmd.hdel(RELAY_INFLIGHT_KEY, f);
  }

  /** Checks the in-flight tasks' results (a progress message may have been missed) and ages. */
  private async poll(): Promise<void> {
    const entries = [...this.inflight.values()].filter((e) => !e.completing);
    if (entries.length === 0) return;
    const p = this.cmd.pipeline();
    for (const e of entries) p.exists(taskKey(e.target, e.id, 'exit_code'));
    const replies = (await p.exec()) ?? [];
    const now = Date.now();
    for (const [i, e] of entries.entries()) {
      if (replies[i]?.[1] === 1) await this.complete(e);
      else if (now - e.since > this.settings.maxAgeMs) await this.giveUp(e);
    }
  }

  /** The maintenance loop: refresh every refreshMs (the first one makes the relay ready), poll every pollMs. */
  private async maintain(): Promise<void> {
    const { refreshMs, pollMs } = this.settings;
    let lastRefresh = -Infinity;
    while (!this.abort.signal.aborted) {
      if (Date.now() - lastRefresh >= refreshMs) {
        try {
          await this.refresh();
          lastRefresh = Date.now();
          this.recovered('refresh');
          this.resolveReady();
        } catch (err) {
          if (this.abort.signal.aborted) break;
          this.report('refresh', err);
        }
      }
      try {
        await this.poll();
        this.recovered('poll');
      } catch (err) {
        if (this.abort.signal.aborted) break;
        this.report('poll', err);
      }
      await sleep(Math.min(pollMs, refreshMs), this.abort.signal);
    }
  }

  /** The pop loop: BLPOP every instance's relay queue, rotated, and handle each request. */
  private async pop(): Promise<void> {
    await this.ready;
    const failures = { count: 0 };
    while (!this.abort.signal.aborted) {
      if (this.queues.length === 0) {
        await sleep(Math.min(this.settings.refreshMs, this.settings.blockSeconds * 1000), this.abort.signal);
        continue;
      }
      const popped = await this.popOne(failures);
      if (popped === 'stop') break;
      if (!popped) continue;
      try {
        await this.handle(popped[0], popped[1]);
      } catch (err) {
        if (this.abort.signal.aborted) break;
        this.report(`request from ${popped[0]}`, err);
      }
    }
  }

  /** One BLPOP over the queues, rotated so one busy module cannot starve the ones listed after it; after a failure, a capped backoff. */
  private async popOne(failures: { count: number }): Promise<[string, string] | null | 'stop'> {
    const start = this.rotation++ % this.queues.length;
    const order = [...this.queues.slice(start), ...this.queues.slice(0, start)];
    try {
      const popped = (await this.blocking.blpop(...order, this.settings.blockSeconds)) as [string, string] | null;
      failures.count = 0;
      this.recovered('pop');
      return popped;
    } catch (err) {
      if (this.abort.signal.aborted) return 'stop';
      this.report('pop', err);
      await sleep(Math.min(5000, 100 * 2 ** Math.min(++failures.count, 6)), this.abort.signal);
      return null;
    }
  }
}
