/**
 * Structured logs of the long-running processes, one line per record on stderr (journald keeps
 * it). `text`: `2025-01-01T10:00:00.000Z info  reconciled key=source/default result=ok duration_ms=12`;
 * `json`: one JSON object per line. Every value is masked (URL passwords, secret-looking fields).
 */
import { UsageError } from '../errors.js';
import { maskSecrets, maskString } from './mask.js';

export type LogFormat = 'text' | 'json';
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface Logger {
  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void;
}

/** Parses `--log-format`. @throws UsageError for anything but text or json. */
export function parseLogFormat(v: string | undefined): LogFormat {
  const f = (v ?? 'text').toLowerCase();
  if (f !== 'text' && f !== 'json') throw new UsageError(`--log-format must be text or json, not ${JSON.stringify(v)}`);
  return f;
}

function textValue(v: unknown): string {
  const s = typeof v === 'string' ? v : JSON.stringify(v) ?? String(v);
  return /^[^\s"=]+$/.test(s) ? s : JSON.stringify(s);
}

/** Field names that hold ids, never secrets (they would otherwise match the secret-name rule). */
const ID_FIELDS = new Set(['key']);

/** Formats one record (pure; `time` given). */
export function formatLogLine(format: LogFormat, time: Date, level: LogLevel, msg: string, fields: Record<string, unknown> = {}): string {
  const safe: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) safe[k] = ID_FIELDS.has(k) && typeof v === 'string' ? maskString(v) : maskSecrets({ [k]: v })[k];
  const m = maskString(msg);
  if (format === 'json') return JSON.stringify({ time: time.toISOString(), level, msg: m, ...safe });
  const rest = Object.entries(safe)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${textValue(v)}`)
    .join(' ');
  return `${time.toISOString()} ${level.padEnd(5)} ${m}${rest ? ' ' + rest : ''}`;
}

/** A logger writing formatted lines to `write` (stderr in production). */
export function createLogger(format: LogFormat, write: (line: string) => void, now: () => Date = () => new Date()): Logger {
  return {
    log: (level, msg, fields) => write(formatLogLine(format, now(), level, msg, fields) + '\n'),
  };
}
