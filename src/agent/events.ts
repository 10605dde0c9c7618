/**
 * Event handling for one module agent. Events are PUBLISHed on `<source>/event/<name>` with a JSON
 * payload. Two kinds of handlers:
 * - `events/<name>/` step directories (every events dir, merged and ordered like action steps),
 *   run for any source (PSUBSCRIBE of EVENTS_PATTERN, i.e. any `<source>/event/<name>`), payload on stdin, AGENT_EVENT_NAME and
 *   AGENT_EVENT_SOURCE set, stopping at the first non-zero exit; output goes to the agent log;
 * - `state/eventsgw.conf` (the seeds' eventsgw): `[actions]` channel -> action name, run as a task
 *   on the agent's own queue with the payload (parsed JSON, else the raw string) as data;
 *   `[commands]` channel -> shell command with the payload on stdin. A key with `*`, `?` or `[`
 *   is a PSUBSCRIBE pattern, otherwise a plain SUBSCRIBE.
 * Handlers run one at a time in arrival order (bounded queue). Payloads are never logged.
 */
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import type { CommandRunner } from '../host/runner.js';
import { resolveAction } from './action-catalog.js';
import { readEnvironmentFile } from './env-file.js';
import { parseIni } from './ini.js';
import { isSafeName, parseEventChannel } from './names.js';
import { runStepProcess } from '../host/step-process.js';
import { taskQueueKey } from './task-store.js';

/** The pattern every agent listens to for `events/<name>/` handlers (as NS8's agent). */
export const EVENTS_PATTERN = '*/event/*';

/** Handlers read from eventsgw.conf. */
export interface EventsGatewayConfig {
  actions: { channel: string; action: string }[];
  commands: { channel: string; command: string }[];
  errors: string[];
}

/** True when a channel key is a glob pattern (PSUBSCRIBE) rather than a channel name. */
export function isChannelPattern(key: string): boolean {
  return /[*?[]/.test(key);
}

/** Parses eventsgw.conf text. Unknown sections and invalid action names are reported, not fatal. */
export function parseEventsGatewayConfig(text: string, file = 'eventsgw.conf'): EventsGatewayConfig {
  const doc = parseIni(text, file);
  const out: EventsGatewayConfig = { actions: [], commands: [], errors: [...doc.errors] };
  for (const [section, entries] of doc.sections) {
    if (section === 'actions') {
      for (const e of entries) {
        if (!isSafeName(e.value)) out.errors.push(`${file}:${e.line}: [actions] ${e.key}: ${JSON.stringify(e.value)} is not a valid action name`);
        else out.actions.push({ channel: e.key, action: e.value });
      }
    } else if (section === 'commands') {
      for (const e of entries) {
        if (e.value === '') out.errors.push(`${file}:${e.line}: [commands] ${e.key}: empty command`);
        else out.commands.push({ channel: e.key, command: e.value });
      }
    } else out.errors.push(`${file}: unknown section [${section}]; allowed: [actions], [commands]`);
  }
  return out;
}

/** Reads eventsgw.conf; a missing file is an empty configuration. */
export async function readEventsGatewayConfig(file: string): Promise<EventsGatewayConfig> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { actions: [], commands: [], errors: [] };
    return { actions: [], commands: [], errors: [`cannot read ${file}: ${(err as Error).message}`] };
  }
  return parseEventsGatewayConfig(text, file);
}

/** How the event handlers of one agent run. */
export interface EventHandlersOptions {
  agentId: string;
  installDir: string;
  stateDir: string;
  /** `<installDir>/events` and any others; empty: no step-directory handlers. */
  eventsDirs: readonly string[];
  /** eventsgw.conf path (default `<stateDir>/eventsgw.conf`). */
  configFile?: string;
  env?: Readonly<Record<string, string | undefined>>;
  log?: (line: string) => void;
  /** Events waiting beyond this are dropped with a log line (default 1000). */
  maxQueue?: number;
  drainMs?: number;
}

/** Connections: `subscriber` is dedicated to pub/sub (read-only user is enough); `redis` may push the agent's own tasks. */
export interface EventHandlersDeps {
  subscriber: Redis;
  redis: Redis;
  runner: CommandRunner;
}

/** Running event handlers. */
export interface EventHandlersHandle {
  start(signal?: AbortSignal): Promise<void>;
  stop(): Promise<void>;
  /** Re-reads eventsgw.conf and adjusts the subscriptions. */
  reload(): Promise<void>;
  /** Resolves when every queued event has been handled. */
  idle(): Promise<void>;
  /** Channels and patterns subscribed now. */
  subscriptions(): { channels: string[]; patterns: string[] };
}

/** Creates the event handlers; nothing happens until start(). */
export function runEventHandlers(opts: EventHandlersOptions, deps: EventHandlersDeps): EventHandlersHandle {
  return new EventHandlers(opts, deps);
}

/** The handlers behind runEventHandlers' handle: subscriptions from eventsgw.conf, one queue of jobs run in order. */
class EventHandlers implements EventHandlersHandle {
  private readonly log: (line: string) => void;
  private readonly configFile: string;
  private readonly maxQueue: number;
  private config: EventsGatewayConfig = { actions: [], commands: [], errors: [] };
  private readonly channels = new Set<string>();
  private readonly patterns = new Set<string>();
  private queue: Promise<void> = Promise.resolve();
  private queued = 0;
  private stopping = false;
  private started: Promise<void> | undefined;

  constructor(
    private readonly opts: EventHandlersOptions,
    private readonly deps: EventHandlersDeps,
  ) {
    this.log = opts.log ?? ((line: string) => process.stderr.write(line + '\n'));
    this.configFile = opts.configFile ?? path.join(opts.stateDir, 'eventsgw.conf');
    this.maxQueue = opts.maxQueue ?? 1000;
  }

  start(signal?: AbortSignal): Promise<void> {
    if (this.started) return this.started;
    this.started = (async () => {
      this.deps.subscriber.on('pmessage', this.onPMessage);
      this.deps.subscriber.on('message', this.onMessage);
      await this.reload();
      if (signal) {
        if (signal.aborted) void this.stop();
        else signal.addEventListener('abort', () => void this.stop(), { once: true });
      }
    })();
    return this.started;
  }

  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const { subscriber } = this.deps;
    await this.started?.catch(() => undefined);
    subscriber.off('pmessage', this.onPMessage);
    subscriber.off('message', this.onMessage);
    if (this.channels.size) await subscriber.unsubscribe(...this.channels).catch(() => undefined);
    if (this.patterns.size) await subscriber.punsubscribe(...this.patterns).catch(() => undefined);
    this.channels.clear();
    this.patterns.clear();
    await this.queue;
  }

  async reload(): Promise<void> {
    this.config = await readEventsGatewayConfig(this.configFile);
    for (const e of this.config.errors) this.log(`warning: ${this.opts.agentId}: ${e}`);
    await this.syncSubscriptions();
  }

  async idle(): Promise<void> {
    let seen;
    do {
      seen = this.queue;
      await seen;
    } while (seen !== this.queue);
  }

  subscriptions(): { channels: string[]; patterns: string[] } {
    return { channels: [...this.channels].sort(), patterns: [...this.patterns].sort() };
  }

  private readonly onPMessage = (pattern: string, channel: string, message: string): void => this.dispatch(pattern, channel, message);
  private readonly onMessage = (channel: string, message: string): void => this.dispatch(channel, channel, message);

  /** Queues every handler of `key` (the channel, or the pattern it matched): step directories, actions, commands. */
  private dispatch(key: string, channel: string, payload: string): void {
    if (key === EVENTS_PATTERN && this.opts.eventsDirs.length > 0) this.enqueue(`event ${channel}`, () => this.runStepDirs(channel, payload));
    for (const a of this.config.actions) if (a.channel === key) this.enqueue(`event ${channel} -> action ${a.action}`, () => this.runActionHandler(channel, a.action, payload));
    for (const c of this.config.commands) if (c.channel === key) this.enqueue(`event ${channel} -> command`, () => this.runCommandHandler(channel, c.command, payload));
  }

  /** Adds a job to the queue (dropped, logged, when maxQueue jobs wait or once stopping); a failing job is logged. */
  private enqueue(what: string, job: () => Promise<void>): void {
    if (this.stopping) return;
    if (this.queued >= this.maxQueue) {
      this.log(`error: ${this.opts.agentId}: event queue full (${this.maxQueue}); dropped ${what}`);
      return;
    }
    this.queued++;
    this.queue = this.queue
      .then(job)
      .catch((err: Error) => this.log(`error: ${this.opts.agentId}: ${what}: ${err.message}`))
      .finally(() => {
        this.queued--;
      });
  }

  /** The environment of handler steps and commands: the agent's, the instance environment file, the agent ids. */
  private async baseEnv(): Promise<Record<string, string>> {
    const { opts } = this;
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(opts.env ?? process.env)) if (v !== undefined) env[k] = v;
    for (const [k, v] of await readEnvironmentFile(path.join(opts.stateDir, 'environment')).catch(() => new Map<string, string>())) env[k] = v;
    env['AGENT_ID'] = opts.agentId;
    env['AGENT_INSTALL_DIR'] = opts.installDir;
    env['AGENT_STATE_DIR'] = opts.stateDir;
    return env;
  }

  /** Runs the event's step files in order with the payload on stdin; a failing step ends the handler. */
  private async runStepDirs(channel: string, payload: string): Promise<void> {
    const { opts } = this;
    const ev = parseEventChannel(channel);
    if (!ev || opts.eventsDirs.length === 0) return;
    const plan = await resolveAction(ev.name, opts.eventsDirs).catch(() => undefined);
    if (!plan || plan.steps.length === 0) return;
    const env = { ...(await this.baseEnv()), AGENT_EVENT_NAME: ev.name, AGENT_EVENT_SOURCE: ev.source, AGENT_COMFD: '2' };
    for (const step of plan.steps) {
      if (step.kind !== 'file') continue;
      const say = (t: string): void => this.log(`${opts.agentId}: event ${ev.name}/${step.name}: ${t.replace(/\n$/, '')}`);
      const res = await runStepProcess({ file: step.path, cwd: opts.stateDir, env, input: payload, comfd: false, onStdout: say, onStderr: say, ...(opts.drainMs !== undefined ? { drainMs: opts.drainMs } : {}) });
      if (res.spawnError) {
        this.log(`warning: ${opts.agentId}: event ${ev.name}: skipped step ${step.name}: ${res.spawnError.message}`);
        continue;
      }
      if (res.exitCode !== 0) {
        this.log(`error: ${opts.agentId}: event ${ev.name} from ${ev.source}: step ${step.name} exited ${res.exitCode}; later steps not run`);
        return;
      }
    }
    this.log(`${opts.agentId}: event ${ev.name} from ${ev.source} handled`);
  }

  /** Submits `action` to the agent's own queue with the payload as data (JSON, else the raw string). */
  private async runActionHandler(channel: string, action: string, payload: string): Promise<void> {
    let data: unknown = payload;
    try {
      data = JSON.parse(payload) as unknown;
    } catch {
      // not JSON: the raw string is the data, as eventsgw did
    }
    const id = randomUUID();
    await this.deps.redis.lpush(taskQueueKey(this.opts.agentId), JSON.stringify({ id, action, data, extra: {}, parent: '' }));
    this.log(`${this.opts.agentId}: event ${channel} -> action ${action} (task ${id})`);
  }

  /** Runs a shell command with the payload on stdin. */
  private async runCommandHandler(channel: string, command: string, payload: string): Promise<void> {
    const { opts } = this;
    const ev = parseEventChannel(channel);
    const env = { ...(await this.baseEnv()), AGENT_EVENT_NAME: ev?.name ?? '', AGENT_EVENT_SOURCE: ev?.source ?? '', AGENT_COMFD: '2' };
    const rec = await this.deps.runner.run(['/bin/sh', '-c', command], { input: payload, env, cwd: opts.stateDir, allowFailure: true, purpose: `${opts.agentId}: event ${channel}: command` });
    if (rec.exitCode !== 0) this.log(`error: ${opts.agentId}: event ${channel}: command exited ${rec.exitCode ?? 'by signal'}: ${rec.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    else this.log(`${opts.agentId}: event ${channel}: command done`);
  }

  /** Subscribes to the channels and patterns the configuration names now, and unsubscribes from the others. */
  private async syncSubscriptions(): Promise<void> {
    const { subscriber } = this.deps;
    const wantChannels = new Set<string>();
    const wantPatterns = new Set<string>();
    if (this.opts.eventsDirs.length > 0) wantPatterns.add(EVENTS_PATTERN);
    for (const k of [...this.config.actions.map((a) => a.channel), ...this.config.commands.map((c) => c.channel)]) (isChannelPattern(k) ? wantPatterns : wantChannels).add(k);
    const addC = [...wantChannels].filter((c) => !this.channels.has(c));
    const delC = [...this.channels].filter((c) => !wantChannels.has(c));
    const addP = [...wantPatterns].filter((p) => !this.patterns.has(p));
    const delP = [...this.patterns].filter((p) => !wantPatterns.has(p));
    if (addC.length) await subscriber.subscribe(...addC);
    if (delC.length) await subscriber.unsubscribe(...delC);
    if (addP.length) await subscriber.psubscribe(...addP);
    if (delP.length) await subscriber.punsubscribe(...delP);
    addC.forEach((c) => this.channels.add(c));
    delC.forEach((c) => this.channels.delete(c));
    addP.forEach((p) => this.patterns.add(p));
    delP.forEach((p) => this.patterns.delete(p));
  }
}
