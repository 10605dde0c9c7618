/**
 * The cache clone of a git source: fetch the branch and hard-reset the work tree to a chosen
 * commit, through the CommandRunner (git from PATH). Never prompts (GIT_TERMINAL_PROMPT=0, ssh
 * BatchMode), every command has a timeout, and URL passwords are masked in every message.
 */
import { mkdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { CommandFailedError, Ns8ctlError } from '../errors.js';
import type { CommandRunner } from '../host/runner.js';
import { maskString } from '../plan/mask.js';

/** Default timeout of one git command (the longest step a controller stop may wait for). */
export const GIT_COMMAND_TIMEOUT_MS = 60_000;

export interface GitSourceSpec {
  /** Remote URL: https://, ssh://, git@host:path, file:// or a local path to a repository. */
  url: string;
  /** Branch to follow (default `main`). */
  branch: string;
  /** Directory inside the repository holding the manifests (default `.`). */
  path: string;
  /** Where the cache clone lives. */
  cacheDir: string;
  /** Timeout of each git command (default 60 s). */
  timeoutMs?: number;
}

/** A commit as shown in events and status. */
export interface CommitInfo {
  sha: string;
  author: string;
  subject: string;
}

const SHA = /^[0-9a-f]{40}([0-9a-f]{24})?$/;

/** Checks a branch name with git's main rules (no `..`, no leading `-`, no spaces or control chars). */
export function validBranchName(b: string): boolean {
  // eslint-disable-next-line no-control-regex -- control characters are exactly what git refuses
  return b.length > 0 && !b.startsWith('-') && !b.includes('..') && !/[\s~^:?*[\\\x00-\x1f\x7f]/.test(b) && !b.endsWith('/') && !b.endsWith('.lock');
}

/** See the module doc. One instance per source; not safe for concurrent use (the work queue runs one reconcile per source). */
export class GitCheckout {
  private prepared = false;
  private checkedOut: string | undefined;

  constructor(
    readonly spec: GitSourceSpec,
    private readonly runner: CommandRunner,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {
    if (!validBranchName(spec.branch)) throw new Ns8ctlError('git_branch_invalid', `git source branch ${JSON.stringify(spec.branch)} is not a valid branch name`);
    if (path.isAbsolute(spec.path) || spec.path.split(/[\\/]/).includes('..')) {
      throw new Ns8ctlError('git_path_invalid', `git source --path ${JSON.stringify(spec.path)} must be relative and stay inside the repository`);
    }
  }

  /** The directory holding the manifests in the work tree. */
  get manifestsDir(): string {
    return path.join(this.spec.cacheDir, this.spec.path);
  }

  private remoteRef(): string {
    return `refs/remotes/origin/${this.spec.branch}`;
  }

  private async git(args: string[], purpose: string, opts: { allowFailure?: boolean; mutating?: boolean; signal?: AbortSignal } = {}): Promise<{ stdout: string; exitCode: number | null; stderr: string }> {
    const env: Record<string, string | undefined> = { GIT_TERMINAL_PROMPT: '0', GIT_ASKPASS: this.env.GIT_ASKPASS ?? '', LC_ALL: 'C' };
    if (!this.env.GIT_SSH_COMMAND) env.GIT_SSH_COMMAND = 'ssh -o BatchMode=yes -o ConnectTimeout=20';
    try {
      return await this.runner.run(['git', '-C', this.spec.cacheDir, ...args], {
        env,
        timeoutMs: this.spec.timeoutMs ?? GIT_COMMAND_TIMEOUT_MS,
        purpose: `git source ${maskString(this.spec.url)}: ${purpose}`,
        ...(opts.allowFailure ? { allowFailure: true } : {}),
        ...(opts.mutating ? { mutating: true } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
    } catch (err) {
      if (err instanceof CommandFailedError) {
        throw new Ns8ctlError(err.code === 'command_missing' ? 'git_missing' : 'git_failed', maskString(err.message) + (err.code === 'command_missing' ? ' (install git: it must be on PATH)' : ''), { cause: err, user: true });
      }
      throw err;
    }
  }

  private async ensureRepository(): Promise<void> {
    if (this.prepared) return;
    let exists = false;
    try {
      exists = (await stat(path.join(this.spec.cacheDir, '.git'))).isDirectory();
    } catch {
      exists = false;
    }
    if (!exists) {
      await mkdir(this.spec.cacheDir, { recursive: true, mode: 0o700 });
      await this.git(['init', '-q'], 'create the cache clone', { mutating: true });
      await this.git(['remote', 'add', 'origin', this.spec.url], 'set the remote', { mutating: true });
    } else {
      await this.git(['remote', 'set-url', 'origin', this.spec.url], 'set the remote', { mutating: true });
    }
    this.prepared = true;
  }

  /**
   * Fetches the branch and returns the commit it points at. Does not touch the work tree. An
   * aborted `signal` kills the running git (a stopping controller does not wait for a slow forge).
   * @throws Ns8ctlError `git_failed` (unreachable remote, unknown branch, timeout) naming the
   *   masked URL and branch; `git_missing` when git is not on PATH.
   */
  async fetch(signal?: AbortSignal): Promise<string> {
    await this.ensureRepository();
    try {
      await this.git(['fetch', '--prune', '--no-tags', '--quiet', 'origin', `+refs/heads/${this.spec.branch}:${this.remoteRef()}`], `fetch branch ${this.spec.branch}`, signal ? { signal } : {});
    } catch (err) {
      const e = err as Ns8ctlError;
      const missing = /couldn't find remote ref|not our ref/i.test(e.message);
      throw new Ns8ctlError('git_fetch_failed', `fetching branch ${this.spec.branch} of ${maskString(this.spec.url)} failed${missing ? ' (the branch does not exist)' : ''}: ${e.message}`, { cause: err, user: true });
    }
    const r = await this.git(['rev-parse', '--verify', '-q', `${this.remoteRef()}^{commit}`], 'read the fetched commit');
    const sha = r.stdout.trim();
    if (!SHA.test(sha)) throw new Ns8ctlError('git_failed', `git source ${maskString(this.spec.url)}: unexpected commit id ${JSON.stringify(sha)} for branch ${this.spec.branch}`);
    return sha;
  }

  /**
   * Makes the work tree exactly `sha` (reset --hard, then clean -ffdx: files that are not in the
   * commit go). Skipped when this instance already checked `sha` out.
   * @throws Ns8ctlError `git_failed` when the commit is not in the clone (e.g. force-pushed away).
   */
  async checkout(sha: string): Promise<void> {
    if (!SHA.test(sha)) throw new Ns8ctlError('git_failed', `cannot check out ${JSON.stringify(sha)}: not a commit id`);
    if (this.checkedOut === sha) return;
    await this.ensureRepository();
    this.checkedOut = undefined;
    await this.git(['reset', '-q', '--hard', sha], `check out ${sha.slice(0, 12)}`, { mutating: true });
    await this.git(['clean', '-q', '-ffdx'], 'remove files not in the commit', { mutating: true });
    this.checkedOut = sha;
  }

  /** Author and subject of a commit (for events). Never throws: unknown fields are empty. */
  async describe(sha: string): Promise<CommitInfo> {
    try {
      const r = await this.git(['log', '-1', '--format=%an%x00%s', sha], 'describe the commit', { allowFailure: true });
      const [author = '', subject = ''] = r.exitCode === 0 ? r.stdout.replace(/\n$/, '').split('\0') : [];
      return { sha, author, subject };
    } catch {
      return { sha, author: '', subject: '' };
    }
  }
}
