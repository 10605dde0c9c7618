/**
 * The audit log (`--audit-log FILE`): the controller leader appends every event of the stream
 * (`ns8ctl/events`: applied commits with author and subject, rejected ones, drift, suspensions,
 * module conditions, rollbacks, configure-module tasks...) to FILE as one JSON object per line,
 * so the history outlives the bounded stream and Redis itself. It resumes after the last entry
 * it wrote (kept in `FILE.pos`), so a restart or a change of leader leaves no gap while the stream
 * still holds the events; the first start copies what the stream has. Files are 0600 and rotate at
 * `maxBytes` (FILE.1 ... FILE.<keep>). Events are masked when recorded: no secret reaches the file.
 * Write failures are logged, never thrown.
 */
import { promises as fs } from 'node:fs';
import type { Redis } from 'ioredis';
import { followEvents, type ControllerEvent } from '../state/events.js';

export interface AuditLogOptions {
  file: string;
  /** Rotate when the file grows past this (default 10 MiB). */
  maxBytes?: number;
  /** Rotated files kept (default 5). */
  keep?: number;
  log?: (line: string) => void;
}

export interface AuditLog {
  stop(): Promise<void>;
  /** Resolves once every event handed over so far is written. */
  whenIdle(): Promise<void>;
}

async function rotate(file: string, keep: number): Promise<void> {
  for (let i = keep - 1; i >= 1; i--) await fs.rename(`${file}.${i}`, `${file}.${i + 1}`).catch(() => undefined);
  await fs.rename(file, `${file}.1`).catch(() => undefined);
}

/** Starts appending; `redis` is duplicated for the blocking read. */
export async function startAuditLog(redis: Redis, opts: AuditLogOptions): Promise<AuditLog> {
  const log = opts.log ?? ((line: string) => process.stderr.write(line + '\n'));
  const maxBytes = opts.maxBytes ?? 10 * 1024 * 1024;
  const keep = opts.keep ?? 5;
  const pos = `${opts.file}.pos`;
  const after = (await fs.readFile(pos, 'utf8').catch(() => '')).trim() || '0';
  const reader = redis.duplicate({ connectionName: 'ns8ctl-audit-log', maxRetriesPerRequest: null });
  reader.on('error', () => undefined);
  const abort = new AbortController();
  let pending: ControllerEvent[] = [];
  let writing: Promise<void> | undefined;
  let failing = false;

  const flush = async (): Promise<void> => {
    while (pending.length > 0) {
      const batch = pending;
      pending = [];
      try {
        const size = await fs.stat(opts.file).then((s) => s.size, () => 0);
        if (size > maxBytes) await rotate(opts.file, keep);
        await fs.appendFile(opts.file, batch.map((e) => JSON.stringify(e) + '\n').join(''), { mode: 0o600 });
        await fs.writeFile(`${pos}.tmp`, `${batch.at(-1)!.id ?? ''}\n`, { mode: 0o600 });
        await fs.rename(`${pos}.tmp`, pos);
        if (failing) log(`audit-log: writing ${opts.file} works again`);
        failing = false;
      } catch (err) {
        if (!failing) log(`audit-log: cannot write ${opts.file}: ${(err as Error).message} (events are kept in the stream meanwhile)`);
        failing = true;
        pending = [...batch, ...pending];
        return;
      }
    }
  };
  const schedule = (): void => {
    writing ??= flush().finally(() => {
      writing = undefined;
      if (pending.length > 0 && !failing) schedule();
    });
  };
  const following = followEvents(
    reader,
    (e) => {
      pending.push(e);
      schedule();
    },
    abort.signal,
    after,
  ).catch((err: Error) => log(`audit-log: stopped following events: ${err.message}`));
  return {
    async stop() {
      abort.abort();
      await following;
      await writing;
      reader.disconnect();
    },
    async whenIdle() {
      while (writing) await writing;
    },
  };
}
