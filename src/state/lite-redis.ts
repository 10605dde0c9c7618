/**
 * A small RESP2 client for the one-shot reading commands (`get`, `diff`, `validate`): loading
 * ioredis compiles about 60 files at every process start, which costs more than everything else
 * `get` does. It speaks the handful of read commands those commands send (READ_COMMANDS, alone or
 * in a pipeline), over a plain TCP or Unix socket connection, and gives the replies ioredis
 * gives (strings, numbers, null, arrays; HGETALL as an object; `[err, value]` pairs from a
 * pipeline's exec). Anything else (writes, MULTI, subscribers, `duplicate()`, ...) goes to a full
 * ioredis client made on first use (`full`), so callers may use the whole ioredis interface.
 *
 * Bounds and failures: each request (a command or a pipeline) fails after `commandTimeoutMs`
 * with the same error a timed-out ioredis command gives (`fault`). When the connection drops with
 * requests in flight, they are sent again through the full client, which reconnects and retries
 * as ioredis does (they are reads: sending one twice changes nothing); later requests use it too.
 */
import type { Socket } from 'node:net';
import type { Redis } from 'ioredis';

/** An argument as ioredis takes it: numbers are sent in decimal, arrays are flattened. */
type Arg = string | number | Buffer | readonly Arg[];

/** `[error, value]` of one command of a pipeline, as ioredis' `exec()` gives it. */
export type PipelineReply = [Error | null, unknown];

/** Read commands served without ioredis; their replies need no transformation but HGETALL's. */
export const READ_COMMANDS = [
  'get', 'mget', 'exists', 'type', 'ttl', 'pttl', 'strlen',
  'hget', 'hmget', 'hgetall', 'hexists', 'hlen', 'hkeys', 'hvals', 'hstrlen',
  'smembers', 'sismember', 'scard', 'llen', 'lrange', 'zcard', 'scan', 'ping', 'info',
] as const;
type ReadCommand = (typeof READ_COMMANDS)[number];

/** A reply error of Redis (`-ERR ...`), named as ioredis names its own. */
export class LiteReplyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ReplyError';
  }
}

/** What the client needs from the caller besides a connected socket. */
export interface LiteOptions {
  /** Bound of each request, ms. */
  commandTimeoutMs: number;
  /** Turns an error of `command` (a reply error, or `Command timed out`) into what the caller reports. */
  fault: (err: Error, command: string) => Error;
  /** Makes the full ioredis client (same server, credentials, database and name); called at most once. */
  full: () => Redis;
}

interface Request {
  commands: [string, string[]][];
  /** Replies read so far: a request's replies are handed over together, once all have arrived. */
  got: unknown[];
  settle: (replies: PipelineReply[]) => void;
  fail: (err: Error) => void;
  timer: NodeJS.Timeout;
}

/** What RespReader.next returns while the next reply has not fully arrived. */
export const INCOMPLETE = Symbol('incomplete');
const CRLF = Buffer.from('\r\n');

/** Encodes commands in RESP (arrays of bulk strings), as one buffer. */
function encode(commands: readonly [string, string[]][]): Buffer {
  const parts: string[] = [];
  for (const [name, args] of commands) {
    parts.push(`*${args.length + 1}\r\n$${Buffer.byteLength(name)}\r\n${name}\r\n`);
    for (const a of args) parts.push(`$${Buffer.byteLength(a)}\r\n${a}\r\n`);
  }
  return Buffer.from(parts.join(''), 'utf8');
}

function flatten(args: readonly Arg[], out: string[] = []): string[] {
  for (const a of args) {
    if (Array.isArray(a)) flatten(a as readonly Arg[], out);
    else out.push(Buffer.isBuffer(a) ? a.toString('utf8') : String(a));
  }
  return out;
}

/** HGETALL's flat `[field, value, ...]` as an object, as ioredis builds it (own `__proto__` fields included). */
function pairsToObject(flat: unknown): unknown {
  if (!Array.isArray(flat)) return flat;
  const obj: Record<string, unknown> = {};
  for (let i = 0; i < flat.length; i += 2) {
    const key = String(flat[i]);
    if (key in obj) Object.defineProperty(obj, key, { value: flat[i + 1], configurable: true, enumerable: true, writable: true });
    else obj[key] = flat[i + 1];
  }
  return obj;
}

/**
 * An incremental RESP2 reader: `push` chunks, `next` returns the next complete reply or
 * INCOMPLETE. A reply split over chunks is read again from its start when more arrives.
 */
export class RespReader {
  private buf: Buffer = Buffer.alloc(0);
  private pos = 0;

  push(chunk: Buffer): void {
    this.buf = this.pos < this.buf.length ? Buffer.concat([this.buf.subarray(this.pos), chunk]) : chunk;
    this.pos = 0;
  }

  next(): unknown {
    const start = this.pos;
    const v = this.read();
    if (v === INCOMPLETE) this.pos = start;
    return v;
  }

  private line(): string | typeof INCOMPLETE {
    const end = this.buf.indexOf(CRLF, this.pos);
    if (end < 0) return INCOMPLETE;
    const s = this.buf.toString('utf8', this.pos, end);
    this.pos = end + 2;
    return s;
  }

  /** The decimal integer ending the current line (lengths, counts, `:` replies), read without making a string. */
  private integer(): number | typeof INCOMPLETE {
    const b = this.buf;
    let i = this.pos;
    const negative = b[i] === 0x2d;
    if (negative) i++;
    let n = 0;
    for (; i < b.length && b[i] !== 0x0d; i++) n = n * 10 + (b[i]! - 0x30);
    if (i + 1 >= b.length) return INCOMPLETE;
    this.pos = i + 2;
    return negative ? -n : n;
  }

  private read(): unknown {
    if (this.pos >= this.buf.length) return INCOMPLETE;
    const type = this.buf[this.pos++];
    switch (type) {
      case 0x2b: // +
        return this.line();
      case 0x2d: {
        // -
        const l = this.line();
        return l === INCOMPLETE ? l : new LiteReplyError(l);
      }
      case 0x3a: // :
        return this.integer();
      case 0x24: {
        // $
        const n = this.integer();
        if (n === INCOMPLETE) return n;
        if (n < 0) return null;
        if (this.pos + n + 2 > this.buf.length) return INCOMPLETE;
        const s = this.buf.toString('utf8', this.pos, this.pos + n);
        this.pos += n + 2;
        return s;
      }
      case 0x2a: {
        // *
        const n = this.integer();
        if (n === INCOMPLETE) return n;
        if (n < 0) return null;
        const out = new Array<unknown>(n);
        for (let i = 0; i < n; i++) {
          const v = this.read();
          if (v === INCOMPLETE) return INCOMPLETE;
          out[i] = v;
        }
        return out;
      }
      default:
        return new LiteReplyError(`ERR unexpected RESP type byte ${String(type)}`);
    }
  }
}

/** A pipeline of READ_COMMANDS; any other command turns it into a full ioredis pipeline holding the same commands. */
class LitePipeline {
  private readonly commands: [string, string[]][] = [];
  private upgraded: ReturnType<Redis['pipeline']> | undefined;

  constructor(private readonly client: LiteRedisCore) {}

  add(name: string, args: readonly Arg[]): this {
    if (this.upgraded) (this.upgraded as unknown as Record<string, (...a: readonly Arg[]) => unknown>)[name]!(...args);
    else this.commands.push([name, flatten(args)]);
    return this;
  }

  /** The full pipeline with the commands queued so far, used from now on. */
  upgrade(): ReturnType<Redis['pipeline']> {
    if (!this.upgraded) {
      this.upgraded = this.client.fullClient().pipeline();
      for (const [name, args] of this.commands) (this.upgraded as unknown as Record<string, (...a: string[]) => unknown>)[name]!(...args);
    }
    return this.upgraded;
  }

  get length(): number {
    return this.upgraded ? this.upgraded.length : this.commands.length;
  }

  async exec(): Promise<PipelineReply[]> {
    if (this.upgraded) return ((await this.upgraded.exec()) ?? []) as PipelineReply[];
    if (this.commands.length === 0) return [];
    return this.client.request(this.commands);
  }
}

/** The connection and request queue behind the Proxy that `liteRedis` returns. */
class LiteRedisCore {
  private readonly reader = new RespReader();
  private readonly inFlight: Request[] = [];
  private full: Redis | undefined;
  /** The socket is unusable (dropped, or a request timed out): requests go to the full client. */
  private dead = false;
  /** disconnect() or quit() was called: nothing is sent again. */
  private closed = false;

  constructor(private readonly socket: Socket, private readonly opts: LiteOptions) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => this.lose());
    socket.on('close', () => this.lose());
  }

  fullClient(): Redis {
    return (this.full ??= this.opts.full());
  }

  /** Sends `commands` as one write; resolves with one `[err, value]` per command. */
  request(commands: [string, string[]][]): Promise<PipelineReply[]> {
    if (this.dead) return this.viaFull(commands);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.timeOut(), this.opts.commandTimeoutMs);
      this.inFlight.push({ commands, got: [], settle: resolve, fail: reject, timer });
      this.socket.write(encode(commands));
    });
  }

  /** One command: its value, or its error thrown. */
  async command(name: string, args: readonly Arg[]): Promise<unknown> {
    const [[err, value]] = (await this.request([[name, flatten(args)]])) as [PipelineReply];
    if (err) throw err;
    return value;
  }

  disconnect(): void {
    this.closed = this.dead = true;
    this.socket.destroy();
    this.full?.disconnect();
  }

  async quit(): Promise<'OK'> {
    this.closed = this.dead = true;
    this.socket.end();
    if (this.full) await this.full.quit();
    return 'OK';
  }

  private onData(chunk: Buffer): void {
    this.reader.push(chunk);
    for (;;) {
      const req = this.inFlight[0];
      if (!req) return;
      const replies = req.got;
      while (replies.length < req.commands.length) {
        const v = this.reader.next();
        if (v === INCOMPLETE) return;
        replies.push(v);
      }
      this.inFlight.shift();
      clearTimeout(req.timer);
      req.settle(
        replies.map((v, i): PipelineReply => {
          const name = req.commands[i]![0];
          if (v instanceof Error) return [this.opts.fault(v, name), undefined];
          return [null, name === 'hgetall' ? pairsToObject(v) : v];
        }),
      );
    }
  }

  /** Requests already sent are sent again through the full client; replies still owed are not awaited. */
  private lose(): void {
    this.dead = true;
    this.socket.destroy();
    for (const req of this.inFlight.splice(0)) {
      clearTimeout(req.timer);
      if (this.closed) req.fail(this.opts.fault(new LiteReplyError('Connection is closed.'), req.commands[0]![0]));
      else this.viaFull(req.commands).then(req.settle, req.fail);
    }
  }

  /**
   * A request got no complete reply in time: every request in flight fails as ioredis fails a
   * timed-out command (each command of a pipeline gets the error in its `[err, value]` pair), and
   * the socket, whose remaining replies would be out of step, is dropped.
   */
  private timeOut(): void {
    this.dead = true;
    const pending = this.inFlight.splice(0);
    this.socket.destroy();
    for (const r of pending) {
      clearTimeout(r.timer);
      r.settle(r.commands.map(([name]): PipelineReply => [this.opts.fault(new LiteReplyError('Command timed out'), name), undefined]));
    }
  }

  private async viaFull(commands: [string, string[]][]): Promise<PipelineReply[]> {
    const p = this.fullClient().pipeline();
    for (const [name, args] of commands) (p as unknown as Record<string, (...a: string[]) => unknown>)[name]!(...args);
    return ((await p.exec()) ?? []) as PipelineReply[];
  }
}

/**
 * A client with the interface of ioredis' `Redis` over `socket` (connected, authenticated,
 * database selected: see connect.ts): READ_COMMANDS, `pipeline()`, `call('ACL', ...)`,
 * `disconnect()` and `quit()` are served on `socket`; every other member is the full client's.
 */
export function liteRedis(socket: Socket, opts: LiteOptions): Redis {
  const core = new LiteRedisCore(socket, opts);
  const own: Record<string, unknown> = {
    pipeline: (commands?: unknown[]): unknown => {
      if (commands !== undefined) return core.fullClient().pipeline(commands as string[][]);
      return pipelineProxy(new LitePipeline(core));
    },
    call: (name: string, ...args: Arg[]): Promise<unknown> => (name.toUpperCase() === 'ACL' ? core.command('ACL', args) : core.fullClient().call(name, ...(args as string[]))),
    disconnect: (): void => core.disconnect(),
    quit: (): Promise<'OK'> => core.quit(),
  };
  for (const name of READ_COMMANDS) own[name] = (...args: Arg[]): Promise<unknown> => core.command(name, args);
  return new Proxy(own, {
    get(target, prop) {
      if (typeof prop === 'symbol' || prop === 'then') return undefined;
      if (Object.hasOwn(target, prop)) return target[prop];
      const full = core.fullClient() as unknown as Record<string, unknown>;
      const v = full[prop];
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(full) : v;
    },
  }) as unknown as Redis;
}

function pipelineProxy(p: LitePipeline): unknown {
  const own = new Set<string>(READ_COMMANDS);
  const proxy: unknown = new Proxy(p, {
    get(target, prop) {
      if (typeof prop === 'symbol' || prop === 'then') return undefined;
      if (prop === 'exec') return () => target.exec();
      if (prop === 'length') return target.length;
      if (own.has(prop)) {
        return (...args: Arg[]) => {
          target.add(prop as ReadCommand, args);
          return proxy;
        };
      }
      const full = target.upgrade() as unknown as Record<string, unknown>;
      const v = full[prop];
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        const r = (v as (...a: unknown[]) => unknown).apply(full, args);
        return r === full ? proxy : r;
      };
    },
  });
  return proxy;
}

/**
 * Sends `commands` on a socket that is connecting or connected and resolves with their replies
 * (reply errors as LiteReplyError values, not thrown), then leaves the socket to `liteRedis`.
 * Rejects with the socket's error, or when it closes first.
 */
export function liteHandshake(socket: Socket, commands: [string, string[]][]): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const reader = new RespReader();
    const replies: unknown[] = [];
    const done = (): void => {
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const onData = (chunk: Buffer): void => {
      reader.push(chunk);
      while (replies.length < commands.length) {
        const v = reader.next();
        if (v === INCOMPLETE) return;
        replies.push(v);
      }
      done();
      resolve(replies);
    };
    const onError = (err: Error): void => {
      done();
      reject(err);
    };
    const onClose = (): void => {
      done();
      reject(new LiteReplyError('Connection is closed.'));
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.write(encode(commands));
  });
}
