/**
 * Controller events: published on `ns8ctl/event/<name>` (NS8 naming: past tense, JSON payload)
 * and appended to the bounded stream `ns8ctl/events` (XADD MAXLEN ~) in one MULTI, so
 * `ns8ctl events` shows history and `ns8ctl events -w` follows new ones. Every payload goes
 * through the secret masker first: secrets never reach a channel or the stream.
 */
import type { Redis } from 'ioredis';
import { RedisError } from '../errors.js';
import { maskSecrets, maskString } from '../runtime/mask.js';
import { channels, keys } from './keys.js';

/** Normal: something happened as intended. Warning: something needs a human. */
export type EventType = 'Normal' | 'Warning';

/** One event, as published and as stored. */
export interface ControllerEvent {
  /** Past-tense name: `source-applied`, `module-stalled`, ... (docs/controller.md lists them). */
  name: string;
  type: EventType;
  /** What it is about: `source/default`, `Module/webapp1`, `controller`. */
  object: string;
  /** One human sentence. */
  message: string;
  /** ISO time the event was recorded. */
  time: string;
  /** Structured details (masked). */
  data?: Record<string, unknown>;
  /** Stream entry id, when read back from the stream. */
  id?: string;
}

/** Default bound of the stream (approximate, MAXLEN ~). */
export const EVENT_STREAM_MAXLEN = 10_000;

const NAME = /^[a-z][a-z0-9]*(-[a-z0-9]+)*$/;

/** Records events; `now` is injected for tests. */
export class EventRecorder {
  constructor(
    private readonly redis: Redis,
    private readonly opts: { now?: () => Date; maxLen?: number; log?: (line: string) => void } = {},
  ) {}

  /**
   * Publishes and stores one event. Never throws for Redis trouble (an event must not fail a
   * reconcile): the failure goes to `log`. Throws RedisError only for a malformed event name,
   * which is a programming error.
   */
  async record(e: Omit<ControllerEvent, 'time' | 'id'>): Promise<ControllerEvent> {
    if (!NAME.test(e.name)) throw new RedisError('event_name_invalid', `event name ${JSON.stringify(e.name)} must be kebab-case (past tense, e.g. source-applied)`);
    const event: ControllerEvent = {
      name: e.name,
      type: e.type,
      object: e.object,
      message: maskString(e.message),
      time: (this.opts.now?.() ?? new Date()).toISOString(),
      ...(e.data ? { data: maskSecrets(e.data) } : {}),
    };
    const payload = JSON.stringify(event);
    try {
      await this.redis
        .multi()
        .publish(channels.controllerEvent(e.name), payload)
        .xadd(keys.events(), 'MAXLEN', '~', String(this.opts.maxLen ?? EVENT_STREAM_MAXLEN), '*', 'event', payload)
        .exec();
    } catch (err) {
      this.opts.log?.(`event ${e.name} for ${e.object} not recorded: ${(err as Error).message}`);
    }
    return event;
  }
}

type StreamEntry = [id: string, fields: string[]];

/** Parses one stream entry; undefined when it is not an event ns8ctl wrote. */
export function parseStreamEntry(entry: StreamEntry): ControllerEvent | undefined {
  const [id, fields] = entry;
  const i = fields.indexOf('event');
  if (i < 0 || i % 2 !== 0) return undefined;
  try {
    const e = JSON.parse(fields[i + 1] ?? '') as ControllerEvent;
    if (typeof e.name !== 'string' || typeof e.object !== 'string') return undefined;
    return { ...e, id };
  } catch {
    return undefined;
  }
}

/** The last `count` events, oldest first. */
export async function readEvents(redis: Redis, count = 100): Promise<ControllerEvent[]> {
  const raw = (await redis.xrevrange(keys.events(), '+', '-', 'COUNT', count)) as StreamEntry[];
  return raw.reverse().flatMap((e) => parseStreamEntry(e) ?? []);
}

/**
 * Follows the stream from `after` (default `$`: only new events), calling `onEvent` for each, until
 * `signal` aborts. Uses XREAD BLOCK on the given (dedicated) connection: Redis wakes it, nothing
 * polls. The connection is disconnected on abort to cut the blocking read short.
 */
export async function followEvents(redis: Redis, onEvent: (e: ControllerEvent) => void, signal: AbortSignal, after = '$'): Promise<void> {
  let last = after;
  const abort = (): void => redis.disconnect();
  signal.addEventListener('abort', abort, { once: true });
  try {
    while (!signal.aborted) {
      let res: [string, StreamEntry[]][] | null;
      try {
        res = (await redis.xread('COUNT', 100, 'BLOCK', 0, 'STREAMS', keys.events(), last)) as [string, StreamEntry[]][] | null;
      } catch (err) {
        if (signal.aborted) return;
        throw new RedisError('redis_command_failed', `following ${keys.events()}: ${(err as Error).message}`, { cause: err });
      }
      for (const [, entries] of res ?? []) {
        for (const entry of entries) {
          last = entry[0];
          const e = parseStreamEntry(entry);
          if (e) onEvent(e);
        }
      }
    }
  } finally {
    signal.removeEventListener('abort', abort);
  }
}

/** One line for `ns8ctl events` text output: `TIME  TYPE  OBJECT  NAME  MESSAGE`. */
export function formatEventLine(e: ControllerEvent): string {
  return `${e.time}  ${e.type.padEnd(7)}  ${e.object}  ${e.name}  ${e.message}`;
}
