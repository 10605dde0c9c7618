/**
 * A git "forge" on disk for git source tests: a bare repository as the remote and a work clone
 * that commits and pushes to it (as Ada). `commit` writes files (null deletes), commits with
 * extra `git commit` flags (e.g. `-S` to sign) and returns the new SHA.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export const GIT_ENV: NodeJS.ProcessEnv = { ...process.env, GIT_AUTHOR_NAME: 'Ada', GIT_AUTHOR_EMAIL: 'ada@example.org', GIT_COMMITTER_NAME: 'Ada', GIT_COMMITTER_EMAIL: 'ada@example.org', GIT_TERMINAL_PROMPT: '0' };

export function git(cwd: string, args: string[], env: NodeJS.ProcessEnv = GIT_ENV): string {
  return execFileSync('git', args, { cwd, env, encoding: 'utf8' }).trim();
}

export interface GitRemote {
  remote: string;
  work: string;
  commit(files: Record<string, string | null>, message: string, opts?: { branch?: string; flags?: string[]; env?: NodeJS.ProcessEnv }): string;
}

/** Makes `<dir>/remote.git` (bare, branch main) and `<dir>/work` pushing to it. */
export function gitRemote(dir: string): GitRemote {
  const remote = path.join(dir, 'remote.git');
  const work = path.join(dir, 'work');
  git(dir, ['init', '-q', '--bare', '-b', 'main', remote]);
  mkdirSync(work);
  git(work, ['init', '-q', '-b', 'main']);
  git(work, ['remote', 'add', 'origin', remote]);
  return {
    remote,
    work,
    commit(files, message, opts = {}) {
      for (const [rel, text] of Object.entries(files)) {
        const f = path.join(work, rel);
        if (text === null) unlinkSync(f);
        else {
          mkdirSync(path.dirname(f), { recursive: true });
          writeFileSync(f, text);
        }
      }
      const env = opts.env ?? GIT_ENV;
      git(work, ['add', '-A'], env);
      git(work, ['commit', '-q', ...(opts.flags ?? []), '-m', message], env);
      git(work, ['push', '-q', 'origin', `HEAD:${opts.branch ?? 'main'}`], env);
      return git(work, ['rev-parse', 'HEAD'], env);
    },
  };
}
