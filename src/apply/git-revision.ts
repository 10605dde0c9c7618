import path from 'node:path';
import { statSync } from 'node:fs';
import type { CommandRunner } from '../host/runner.js';

/**
 * The git commit checked out in the work tree that holds `file`, or `` when the file is not in a
 * git work tree (or is stdin). Results are cached per directory: one `git` spawn per directory.
 */
export function makeRevisionLookup(runner: CommandRunner): (file: string) => Promise<string> {
  const cache = new Map<string, Promise<string>>();
  return (file: string) => {
    if (file === '-') return Promise.resolve('');
    let dir = path.resolve(file);
    try {
      if (!statSync(dir).isDirectory()) dir = path.dirname(dir);
    } catch {
      dir = path.dirname(dir);
    }
    let hit = cache.get(dir);
    if (!hit) {
      hit = runner
        .run(['git', '-C', dir, 'rev-parse', '--verify', '-q', 'HEAD'], { allowFailure: true, timeoutMs: 10_000, env: { ...process.env, GIT_TERMINAL_PROMPT: '0' } })
        .then((r) => (r.exitCode === 0 ? r.stdout.trim() : ''))
        .catch(() => '');
      cache.set(dir, hit);
    }
    return hit;
  };
}
