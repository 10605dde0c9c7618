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
  const log = opts.log ?? ((line: string) => process.stderr.write(line + '\n'));
  const configFile = opts.configFile ?? path.join(opts.stateDir, 'eventsgw.conf');
  const maxQueue = opts.maxQueue ?? 1000;
  let config: EventsGatewayConfig = { actions: [], commands: [], errors: [] };
  const channels = new Set<string>();
  const patterns = new Set<string>();
  let queue: Promise<void> = Promise.resolve();
  let queued = 0;
  let stopping = false;
  let started: Promise<void> | undefined;

  const baseEnv = async (): Promise<Record<string, string>> => {
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(opts.env ?? process.env)) if (v !== undefined) env[k] = v;
    for (const [k, v] of await readEnvironmentFile(path.join(opts.stateDir, 'environment')).catch(() => new Map<string, string>())) env[k] = v;
    env['AGENT_ID'] = opts.agentId;
    env['AGENT_INSTALL_DIR'] = opts.installDir;
    env['AGENT_STATE_DIR'] = opts.stateDir;
    return env;
  };

  const runStepDirs = async (channel: string, payload: string): Promise<void> => {
    const ev = parseEventChannel(channel);
    if (!ev || opts.eventsDirs.length === 0) return;
    const plan = await resolveAction(ev.name, opts.eventsDirs).catch(() => undefined);
    if (!plan || plan.steps.length === 0) return;
    const env = { ...(await baseEnv()), AGENT_EVENT_NAME: ev.name, AGENT_EVENT_SOURCE: ev.source, AGENT_COMFD: '2' };
    for (const step of plan.steps) {
      if (step.kind !== 'file') continue;
      const res = await runStepProcess({
        file: step.path,
        cwd: opts.stateDir,
        env,
        input: payload,
        comfd: false,
        onStdout: (t) => log(`${opts.agentId}: event ${ev.name}/${step.name}: ${t.replace(/\n$/, '')}`),
        onStderr: (t) => log(`${opts.agentId}: event ${ev.name}/${step.name}: ${t.replace(/\n$/, '')}`),
        ...(opts.drainMs !== undefined ? { drainMs: opts.drainMs } : {}),
      });
      if (res.spawnError) {
        log(`warning: ${opts.agentId}: event ${ev.name}: skipped step ${step.name}: ${res.spawnError.message}`);
        continue;
      }
      if (res.exitCode !== 0) {
        log(`error: ${opts.agentId}: event ${ev.name} from ${ev.source}: step ${step.name} exited ${res.exitCode}; later steps not run`);
        return;
      }
    }
    log(`${opts.agentId}: event ${ev.name} from ${ev.source} handled`);
  };

  const runActionHandler = async (channel: string, action: string, payload: string): Promise<void> => {
    let data: unknown = payload;
    try {
      data = JSON.parse(payload) as unknown;
    } catch {
      // not JSON: the raw string is the data, as eventsgw did
    }
    const id = randomUUID();
    await deps.redis.lpush(taskQueueKey(opts.agentId), JSON.stringify({ id, action, data, extra: {}, parent: '' }));
    log(`${opts.agentId}: event ${channel} -> action ${action} (task ${id})`);
  };

  const runCommandHandler = async (channel: string, command: string, payload: string): Promise<void> => {
    const ev = parseEventChannel(channel);
    const env = { ...(await baseEnv()), AGENT_EVENT_NAME: ev?.name ?? '', AGENT_EVENT_SOURCE: ev?.source ?? '', AGENT_COMFD: '2' };
    const rec = await deps.runner.run(['/bin/sh', '-c', command], { input: payload, env, cwd: opts.stateDir, allowFailure: true, purpose: `${opts.agentId}: event ${channel}: command` });
    if (rec.exitCode !== 0) log(`error: ${opts.agentId}: event ${channel}: command exited ${rec.exitCode ?? 'by signal'}: ${rec.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    else log(`${opts.agentId}: event ${channel}: command done`);
  };

  const enqueue = (what: string, job: () => Promise<void>): void => {
    if (stopping) return;
    if (queued >= maxQueue) {
      log(`error: ${opts.agentId}: event queue full (${maxQueue}); dropped ${what}`);
      return;
    }
    queued++;
    queue = queue
      .then(job)
      .catch((err: Error) => log(`error: ${opts.agentId}: ${what}: ${err.message}`))
      .finally(() => {
        queued--;
      });
  };

  const dispatch = (key: string, channel: string, payload: string): void => {
    if (key === EVENTS_PATTERN && opts.eventsDirs.length > 0) enqueue(`event ${channel}`, () => runStepDirs(channel, payload));
    for (const a of config.actions) if (a.channel === key) enqueue(`event ${channel} -> action ${a.action}`, () => runActionHandler(channel, a.action, payload));
    for (const c of config.commands) if (c.channel === key) enqueue(`event ${channel} -> command`, () => runCommandHandler(channel, c.command, payload));
  };

  const onPMessage = (pattern: string, channel: string, message: string): void => dispatch(pattern, channel, message);
  const onMessage = (channel: string, message: string): void => dispatch(channel, channel, message);

  const syncSubscriptions = async (): Promise<void> => {
    const wantChannels = new Set<string>();
    const wantPatterns = new Set<string>();
    if (opts.eventsDirs.length > 0) wantPatterns.add(EVENTS_PATTERN);
    for (const k of [...config.actions.map((a) => a.channel), ...config.commands.map((c) => c.channel)]) (isChannelPattern(k) ? wantPatterns : wantChannels).add(k);
    const addC = [...wantChannels].filter((c) => !channels.has(c));
    const delC = [...channels].filter((c) => !wantChannels.has(c));
    const addP = [...wantPatterns].filter((p) => !patterns.has(p));
    const delP = [...patterns].filter((p) => !wantPatterns.has(p));
    if (addC.length) await deps.subscriber.subscribe(...addC);
    if (delC.length) await deps.subscriber.unsubscribe(...delC);
    if (addP.length) await deps.subscriber.psubscribe(...addP);
    if (delP.length) await deps.subscriber.punsubscribe(...delP);
    addC.forEach((c) => channels.add(c));
    delC.forEach((c) => channels.delete(c));
    addP.forEach((p) => patterns.add(p));
    delP.forEach((p) => patterns.delete(p));
  };

  const reload = async (): Promise<void> => {
    config = await readEventsGatewayConfig(configFile);
    for (const e of config.errors) log(`warning: ${opts.agentId}: ${e}`);
    await syncSubscriptions();
  };

  return {
    start(signal?: AbortSignal): Promise<void> {
      if (started) return started;
      started = (async () => {
        deps.subscriber.on('pmessage', onPMessage);
        deps.subscriber.on('message', onMessage);
        await reload();
        if (signal) {
          if (signal.aborted) void this.stop();
          else signal.addEventListener('abort', () => void this.stop(), { once: true });
        }
      })();
      return started;
    },
    async stop(): Promise<void> {
      if (stopping) return;
      stopping = true;
      await started?.catch(() => undefined);
      deps.subscriber.off('pmessage', onPMessage);
      deps.subscriber.off('message', onMessage);
      if (channels.size) await deps.subscriber.unsubscribe(...channels).catch(() => undefined);
      if (patterns.size) await deps.subscriber.punsubscribe(...patterns).catch(() => undefined);
      channels.clear();
      patterns.clear();
      await queue;
    },
    reload,
    async idle(): Promise<void> {
      let seen;
      do {
        seen = queue;
        await seen;
      } while (seen !== queue);
    },
    subscriptions: () => ({ channels: [...channels].sort(), patterns: [...patterns].sort() }),
  };
}
