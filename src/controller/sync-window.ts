/**
 * Sync windows (Argo CD's, for small shops: "apply changes only at night or at the weekend"):
 * `[DAYS ]HH:MM-HH:MM` in the host's local time, e.g. `02:00-05:00`, `Sat,Sun 00:00-23:59`,
 * `Mon-Fri 22:00-06:00` (a window ending before it starts runs past midnight and belongs to the
 * day it starts). DAYS: `Mon`..`Sun`, ranges (`Mon-Fri`, `Fri-Mon`) and lists, or `*`. With
 * windows given, a source applies a new revision only while one is open; drift repair of what
 * it applied last goes on at any time. Pure (the clock is passed in).
 */
import { UsageError } from '../errors.js';

export interface SyncWindow {
  /** Days the window starts on (0 = Sunday). */
  days: ReadonlySet<number>;
  /** Minutes after midnight. */
  startMin: number;
  endMin: number;
  /** As given, for messages. */
  text: string;
}

const DAY_NAMES = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const DAY = 24 * 60;

function dayIndex(name: string, flag: string, text: string): number {
  const i = DAY_NAMES.findIndex((d) => d.toLowerCase() === name.toLowerCase());
  if (i < 0) throw new UsageError(`${flag} ${JSON.stringify(text)}: unknown day ${JSON.stringify(name)}; days are ${DAY_NAMES.join(', ')} (ranges like Mon-Fri, lists like Sat,Sun, or *)`);
  return i;
}

function minutes(hhmm: string, flag: string, text: string): number {
  const m = /^(\d{1,2}):(\d{2})$/.exec(hhmm);
  if (!m || Number(m[1]) > 23 || Number(m[2]) > 59) throw new UsageError(`${flag} ${JSON.stringify(text)}: ${JSON.stringify(hhmm)} is not a time HH:MM (00:00 to 23:59)`);
  return Number(m[1]) * 60 + Number(m[2]);
}

/** Parses one window. @throws UsageError naming the flag, the text and what is wrong. */
export function parseSyncWindow(text: string, flag = '--sync-window'): SyncWindow {
  const parts = text.trim().split(/\s+/);
  if (parts.length === 0 || parts.length > 2 || !parts[parts.length - 1]!.includes('-')) {
    throw new UsageError(`${flag} ${JSON.stringify(text)}: expected [DAYS ]HH:MM-HH:MM, e.g. "02:00-05:00" or "Sat,Sun 01:00-06:00"`);
  }
  const [from, to, extra] = parts[parts.length - 1]!.split('-');
  if (from === undefined || to === undefined || extra !== undefined) throw new UsageError(`${flag} ${JSON.stringify(text)}: expected HH:MM-HH:MM`);
  const startMin = minutes(from, flag, text);
  const endMin = minutes(to, flag, text);
  if (startMin === endMin) throw new UsageError(`${flag} ${JSON.stringify(text)}: the window starts and ends at the same time; for a whole day use 00:00-23:59`);
  const days = new Set<number>();
  const spec = parts.length === 2 ? parts[0]! : '*';
  for (const piece of spec.split(',')) {
    if (piece === '*') {
      for (let d = 0; d < 7; d++) days.add(d);
      continue;
    }
    const [a, b, more] = piece.split('-');
    if (!a || more !== undefined) throw new UsageError(`${flag} ${JSON.stringify(text)}: ${JSON.stringify(piece)} is not a day or a day range`);
    const s = dayIndex(a, flag, text);
    const e = b === undefined ? s : dayIndex(b, flag, text);
    for (let d = s; ; d = (d + 1) % 7) {
      days.add(d);
      if (d === e) break;
    }
  }
  return { days, startMin, endMin, text: text.trim() };
}

/** The opening at or after `from` of one window (in local time), as a Date. */
function nextStart(w: SyncWindow, from: Date): Date | undefined {
  for (let k = 0; k <= 7; k++) {
    const d = new Date(from.getFullYear(), from.getMonth(), from.getDate() + k, Math.floor(w.startMin / 60), w.startMin % 60, 0, 0);
    if (w.days.has(d.getDay()) && d.getTime() > from.getTime()) return d;
  }
  return undefined;
}

function isOpen(w: SyncWindow, now: Date): boolean {
  const m = now.getHours() * 60 + now.getMinutes();
  const today = now.getDay();
  const yesterday = (today + 6) % 7;
  if (w.endMin > w.startMin) return w.days.has(today) && m >= w.startMin && m < w.endMin;
  // Past midnight: from the start day's evening to the next morning.
  return (w.days.has(today) && m >= w.startMin) || (w.days.has(yesterday) && m < w.endMin);
}

/**
 * Whether a new revision may be applied at `now`: always without windows; else while one is
 * open. When closed, `nextOpen` says when the next window opens.
 */
export function windowState(windows: readonly SyncWindow[], now: Date): { open: true } | { open: false; nextOpen: Date } {
  if (windows.length === 0 || windows.some((w) => isOpen(w, now))) return { open: true };
  const next = windows.map((w) => nextStart(w, now)).filter((d): d is Date => d !== undefined).sort((a, b) => a.getTime() - b.getTime())[0];
  return { open: false, nextOpen: next ?? new Date(now.getTime() + DAY * 60_000) };
}

/** `Sat 2026-11-28 02:00` in local time. */
export function formatLocal(d: Date): string {
  const pad = (n: number): string => String(n).padStart(2, '0');
  return `${DAY_NAMES[d.getDay()]} ${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
