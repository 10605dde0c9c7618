/**
 * Notifications to a webhook (Slack, Mattermost, Rocket.Chat, ntfy, a script...), run by the
 * controller leader: it follows the event stream (`ns8ctl/events`, XREAD BLOCK, no polling), so it
 * sees what every part records (sources, modules, node agents), and POSTs
 * `{"text": "...", "event": {...}}` (JSON; `text` is what chat webhooks show):
 * - every Warning event, except one equal (name, object, message) to one sent within the quiet
 *   period (default 1 h): a source failing every minute sends one message, not sixty;
 * - the first Normal event of an object that had a Warning sent, as `resolved`, so whoever was
 *   told about the problem is told it is over.
 * Events are masked when recorded, so no secret is sent. Posts go one at a time in order, each
 * with a timeout and two retries; a queue of more than 100 drops the oldest (logged). Failures
 * are logged, never thrown: notifications must not disturb reconciling.
 */
import type { Redis } from 'ioredis';
import { maskString } from '../runtime/mask.js';
import { keys } from '../state/keys.js';
import { followEvents, type ControllerEvent } from '../state/events.js';

export interface NotifierOptions {
  url: string;
  /** Same Warning not sent again within this many ms (default 1 h). */
  quietMs?: number;
  /** Timeout of one POST (default 5 s). */
  timeoutMs?: number;
  /** Pause before the retries of a failed POST (default 1 s, 3 s). */
  retryDelaysMs?: number[];
  now?: () => number;
  log?: (line: string) => void;
}

export interface Notifier {
  stop(): Promise<void>;
  /** Resolves once every event handed over so far was posted or given up (tests, shutdown). */
  whenIdle(): Promise<void>;
}

const MAX_QUEUE = 100;

/** The message text of an event, for people. */
export function notificationText(e: ControllerEvent, resolved: boolean): string {
  return `[ns8ctl] ${resolved ? 'resolved' : e.type === 'Warning' ? 'warning' : 'info'}: ${e.object}: ${e.name}: ${e.message}`;
}

/**
 * Decides which events to send (see the module doc). Pure but for its memory of what was sent;
 * `now` in ms.
 */
export class NotificationFilter {
  private readonly sent = new Map<string, number>();
  private readonly open = new Set<string>();
  constructor(private readonly quietMs: number) {}

  /** `warning`, `resolved` or undefined (not sent). */
  decide(e: ControllerEvent, now: number): 'warning' | 'resolved' | undefined {
    if (e.type === 'Warning') {
      const key = `${e.name}\0${e.object}\0${e.message}`;
      const last = this.sent.get(key);
      this.open.add(e.object);
      if (last !== undefined && now - last < this.quietMs) return undefined;
      this.sent.set(key, now);
      if (this.sent.size > 10_000) this.sent.delete(this.sent.keys().next().value as string);
      return 'warning';
    }
    if (!this.open.delete(e.object)) return undefined;
    // A later Warning of the same object is news again.
    for (const k of [...this.sent.keys()]) if (k.split('\0')[1] === e.object) this.sent.delete(k);
    return 'resolved';
  }
}

/**
 * Starts following and posting; `redis` is duplicated for the blocking read. Every event recorded
 * after this resolves is seen (it follows from the stream's last entry at start, not from
 * whenever its first read happens to reach Redis).
 */
export async function startNotifier(redis: Redis, opts: NotifierOptions): Promise<Notifier> {
  const last = (await redis.xrevrange(keys.events(), '+', '-', 'COUNT', 1))[0]?.[0] ?? '0-0';
  const log = opts.log ?? ((line: string) => process.stderr.write(line + '\n'));
  const now = opts.now ?? Date.now;
  const filter = new NotificationFilter(opts.quietMs ?? 3_600_000);
  const retries = opts.retryDelaysMs ?? [1000, 3000];
  const abort = new AbortController();
  const reader = redis.duplicate({ connectionName: 'ns8ctl-notifier', maxRetriesPerRequest: null });
  reader.on('error', () => undefined);
  // Webhook URLs often carry their secret in the path or query (Slack's do): logs name the host only.
  const where = ((): string => {
    try {
      const u = new URL(opts.url);
      return `${u.protocol}//${u.host}/...`;
    } catch {
      return maskString(opts.url);
    }
  })();
  const queue: { e: ControllerEvent; kind: 'warning' | 'resolved' }[] = [];
  let busy: Promise<void> = Promise.resolve();
  let draining = false;

  const post = async (item: { e: ControllerEvent; kind: 'warning' | 'resolved' }): Promise<void> => {
    const body = JSON.stringify({ text: notificationText(item.e, item.kind === 'resolved'), event: item.e, resolved: item.kind === 'resolved' });
    let failure = '';
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await fetch(opts.url, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal: AbortSignal.timeout(opts.timeoutMs ?? 5000) });
        await res.arrayBuffer().catch(() => undefined);
        if (res.ok) return;
        failure = `HTTP ${res.status}`;
      } catch (err) {
        failure = (err as Error).message;
      }
      if (attempt >= retries.length || abort.signal.aborted) {
        log(`notifier: ${item.e.name} for ${item.e.object} not sent to ${where}: ${failure}`);
        return;
      }
      await new Promise((r) => setTimeout(r, retries[attempt]));
    }
  };
  const drain = (): void => {
    if (draining) return;
    draining = true;
    busy = (async () => {
      while (queue.length > 0) await post(queue.shift()!);
      draining = false;
    })();
  };
  const onEvent = (e: ControllerEvent): void => {
    const kind = filter.decide(e, now());
    if (!kind) return;
    queue.push({ e, kind });
    if (queue.length > MAX_QUEUE) {
      const dropped = queue.shift()!;
      log(`notifier: more than ${MAX_QUEUE} notifications waiting for ${where}: dropped ${dropped.e.name} for ${dropped.e.object}`);
    }
    drain();
  };
  const following = followEvents(reader, onEvent, abort.signal, last).catch((err: Error) => log(`notifier: stopped following events: ${err.message}`));
  return {
    async stop() {
      abort.abort();
      await following;
      await busy;
      reader.disconnect();
    },
    async whenIdle() {
      while (draining || queue.length > 0) await busy;
    },
  };
}
