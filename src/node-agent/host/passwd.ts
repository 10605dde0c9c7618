/**
 * Reads users straight from /etc/passwd and /etc/subuid|subgid (no process spawned), so observing
 * 200 instances costs three file reads.
 */
import { promises as fs } from 'node:fs';
import type { PasswdEntry } from '../types.js';

async function readOrEmpty(file: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

/** Parses passwd text: name -> entry. Malformed lines are skipped. */
export function parsePasswd(text: string): Map<string, PasswdEntry> {
  const out = new Map<string, PasswdEntry>();
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length < 7 || !f[0]) continue;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (!Number.isInteger(uid) || !Number.isInteger(gid)) continue;
    out.set(f[0], { name: f[0], uid, gid, home: f[5] ?? '', shell: f[6] ?? '' });
  }
  return out;
}

/** Names that have a subordinate id range in subuid/subgid text (`name:start:count`). */
export function parseSubids(text: string): Set<string> {
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length >= 3 && f[0] && Number(f[2]) > 0) out.add(f[0]);
  }
  return out;
}

/** Users of the host, and which have both subuid and subgid ranges. */
export async function readUsers(files: { passwdFile: string; subuidFile: string; subgidFile: string }): Promise<{ users: Map<string, PasswdEntry>; subids: Set<string> }> {
  const [p, su, sg] = await Promise.all([readOrEmpty(files.passwdFile), readOrEmpty(files.subuidFile), readOrEmpty(files.subgidFile)]);
  const uids = parseSubids(su);
  const gids = parseSubids(sg);
  return { users: parsePasswd(p), subids: new Set([...uids].filter((n) => gids.has(n))) };
}

/**
 * First free subordinate id range of `count` ids at or above `min` (useradd's SUB_UID_MIN
 * default) that no line of any of `texts` (subuid and subgid contents) overlaps, or undefined
 * when none fits below `max` (SUB_UID_MAX).
 */
export function freeSubidRange(texts: readonly string[], count = 65536, min = 100000, max = 600100000): number | undefined {
  const used: [number, number][] = [];
  for (const text of texts) {
    for (const line of text.split('\n')) {
      const f = line.split(':');
      const start = Number(f[1]);
      const n = Number(f[2]);
      if (f.length >= 3 && Number.isInteger(start) && Number.isInteger(n) && n > 0) used.push([start, start + n - 1]);
    }
  }
  used.sort((a, b) => a[0] - b[0]);
  let candidate = min;
  for (const [start, end] of used) {
    if (end < candidate) continue;
    if (start > candidate + count - 1) break;
    candidate = end + 1;
  }
  return candidate + count - 1 <= max ? candidate : undefined;
}
