/**
 * Finds the Debian mirror the host's apt already uses, so the node root filesystem comes from the
 * same place (these machines reach only their configured mirror).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';

/** Used when the host names no Debian mirror. */
export const FALLBACK_MIRROR = 'http://deb.debian.org/debian';

/**
 * Pure: the first `deb` source of a Debian main archive (not security, not a third-party
 * repository), from deb822 `.sources` texts and one-line `sources.list` texts.
 */
export function pickMirror(files: { name: string; text: string }[]): string | undefined {
  const candidates: string[] = [];
  for (const f of files) {
    if (f.name.endsWith('.sources')) {
      for (const stanza of f.text.split(/\n\s*\n/)) {
        const field = (k: string): string => new RegExp(`^${k}:\\s*(.*)$`, 'mi').exec(stanza)?.[1]?.trim() ?? '';
        if (!/\bdeb\b/.test(field('Types')) || /^no$/i.test(field('Enabled'))) continue;
        for (const uri of field('URIs').split(/\s+/).filter(Boolean)) candidates.push(uri);
      }
    } else {
      for (const line of f.text.split('\n')) {
        const m = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+/.exec(line);
        if (m?.[1]) candidates.push(m[1]);
      }
    }
  }
  return candidates.find((u) => /^https?:\/\//.test(u) && /\/debian\/?$/.test(u) && !/security/.test(u))?.replace(/\/$/, '');
}

/** Reads /etc/apt/sources.list and /etc/apt/sources.list.d/* and picks the mirror; falls back to deb.debian.org. */
export async function hostMirror(aptDir = '/etc/apt'): Promise<string> {
  const files: { name: string; text: string }[] = [];
  const read = async (p: string): Promise<void> => {
    const text = await fsp.readFile(p, 'utf8').catch(() => null);
    if (text !== null) files.push({ name: path.basename(p), text });
  };
  await read(path.join(aptDir, 'sources.list'));
  const dir = path.join(aptDir, 'sources.list.d');
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  for (const n of names.sort()) if (n.endsWith('.list') || n.endsWith('.sources')) await read(path.join(dir, n));
  return pickMirror(files) ?? FALLBACK_MIRROR;
}
