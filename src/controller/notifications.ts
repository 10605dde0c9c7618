/**
 * Redis notifications the controller reacts to, on one subscriber connection (PSUBSCRIBE):
 * every `ns8ctl/event/*` channel (desired-state-changed from apply, module-status-changed from
 * node agents, suspend/resume, webhook fetch requests, leader release) and, when the server has
 * keyspace notifications on, writes to `ns8ctl/status/module/*`. Messages only say *when*; the
 * reconciles re-read state. After a reconnect `onReconnect` fires, since messages sent while
 * disconnected are lost and everything must be rechecked.
 */
import type { Redis } from 'ioredis';
import { channels, keys } from '../state/keys.js';
import { longLivedConnection } from './connections.js';

/** One notification, decoded. */
export interface Notification {
  /** Event name after `ns8ctl/event/` (`desired-state-changed`), or `module-status-written` for a keyspace notification. */
  name: string;
  channel: string;
  /** Parsed JSON payload; undefined when the payload was not JSON. */
  payload: unknown;
}

const EVENT_PREFIX = channels.controllerEvent('');
const STATUS_PATTERN = `__keyspace@*__:${keys.moduleStatus('*')}`;

/** Decodes a pmessage (pure): undefined for channels this module does not know. */
export function decodeNotification(channel: string, message: string): Notification | undefined {
  if (channel.startsWith(EVENT_PREFIX)) {
    let payload: unknown;
    try {
      payload = JSON.parse(message);
    } catch {
      payload = undefined;
    }
    return { name: channel.slice(EVENT_PREFIX.length), channel, payload };
  }
  const m = /^__keyspace@\d+__:(.*)$/.exec(channel);
  if (m) {
    const prefix = keys.moduleStatus('');
    const key = m[1] as string;
    if (key.startsWith(prefix)) return { name: 'module-status-written', channel, payload: { module: key.slice(prefix.length), op: message } };
  }
  return undefined;
}

/**
 * Module ids named by a `desired-state-changed` payload (`{"keys":["ns8ctl/desired/module/x"]}`)
 * and whether any other kind changed.
 */
export function changedModules(payload: unknown): { modules: string[]; other: boolean } {
  const list = (payload as { keys?: unknown } | undefined)?.keys;
  const modules: string[] = [];
  let other = false;
  if (!Array.isArray(list)) return { modules, other: true };
  const prefix = keys.desired('Module', '');
  for (const k of list) {
    if (typeof k !== 'string') continue;
    if (k.startsWith(prefix)) modules.push(k.slice(prefix.length));
    else if (k.startsWith('Module/')) modules.push(k.slice('Module/'.length));
    else other = true;
  }
  return { modules, other };
}

export interface SubscriberOptions {
  onNotification: (n: Notification) => void;
  /** Called after the connection came back (not on the first connect). */
  onReconnect?: () => void;
  name?: string;
}

/** See the module doc. */
export class NotificationSubscriber {
  private conn: Redis | undefined;
  private connectedOnce = false;

  constructor(
    private readonly base: Redis,
    private readonly opts: SubscriberOptions,
  ) {}

  /** True while the subscriber connection is up. */
  get ready(): boolean {
    return this.conn?.status === 'ready';
  }

  /** Connects and subscribes. @throws RedisError when Redis cannot be reached. */
  async start(): Promise<void> {
    if (this.conn) return;
    const conn = await longLivedConnection(this.base, this.opts.name ?? 'ns8ctl-controller-events');
    this.conn = conn;
    conn.on('pmessage', (_pattern: string, channel: string, message: string) => {
      const n = decodeNotification(channel, message);
      if (n) this.opts.onNotification(n);
    });
    conn.on('ready', () => {
      if (this.connectedOnce) this.opts.onReconnect?.();
    });
    await conn.psubscribe(channels.controllerEventPattern, STATUS_PATTERN);
    this.connectedOnce = true;
  }

  async stop(): Promise<void> {
    const c = this.conn;
    this.conn = undefined;
    if (!c) return;
    c.disconnect();
  }
}
