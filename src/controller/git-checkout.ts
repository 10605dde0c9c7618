/**
 * The cache clone of a git source: fetch the branch and hard-reset the work tree to a chosen
 * commit, through the CommandRunner (git from PATH). Never prompts (GIT_TERMINAL_PROMPT=0, ssh
 * BatchMode), every command has a timeout, and URL passwords are masked in every message.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CommandFailedError, Ns8ctlError } from '../errors.js';
import type { CommandRunner } from '../host/runner.js';
import { maskString } from '../runtime/mask.js';

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
  /**
   * OpenPGP public keys (a file, or a directory of `*.asc|*.gpg|*.pub|*.key` files): when set, a
   * commit is applied only when signed by one of them (`git verify-commit`).
   */
  trustedKeys?: string;
}

/** Who signed a verified commit. */
export interface CommitSigner {
  /** Fingerprint of the primary key. */
  fingerprint: string;
  /** User id of the signature (`Ops <ops@example.org>`). */
  uid: string;
}

const KEY_FILE = /\.(asc|gpg|pub|key)$/;

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

  private async git(args: string[], purpose: string, opts: { allowFailure?: boolean; mutating?: boolean; signal?: AbortSignal; env?: Record<string, string> } = {}): Promise<{ stdout: string; exitCode: number | null; stderr: string }> {
    const env: Record<string, string | undefined> = { GIT_TERMINAL_PROMPT: '0', GIT_ASKPASS: this.env.GIT_ASKPASS ?? '', LC_ALL: 'C', ...opts.env };
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

  /**
   * Checks that `sha` is signed by one of the trusted keys. The keys live in a keyring of their
   * own (`.git/ns8ctl-trusted-keys`, rebuilt whenever the key files change, so a key removed
   * from them is no longer trusted); the user's keyrings play no part.
   * @throws Ns8ctlError `commit_signature_invalid` (unsigned, bad signature, unknown, expired or
   *   revoked key) naming the commit and why; `trusted_keys_invalid` when the key files hold no
   *   key; `gpg_missing` when gpg is not on PATH.
   */
  async verifyCommit(sha: string): Promise<CommitSigner> {
    const keys = this.spec.trustedKeys;
    if (!keys) throw new Ns8ctlError('internal', 'verifyCommit without trusted keys', { user: false });
    await this.ensureRepository();
    const home = await this.trustedKeyring(keys);
    const r = await this.git(['verify-commit', '--raw', sha], `verify the signature of ${sha.slice(0, 12)}`, { allowFailure: true, env: { GNUPGHOME: home } });
    const status = r.stderr;
    if (/cannot run gpg|gpg failed to|No such file or directory/i.test(status) && !/\[GNUPG:\]/.test(status)) {
      throw new Ns8ctlError('gpg_missing', `verifying commit signatures needs gpg on PATH (Debian: apt-get install gnupg): ${status.trim().split('\n').slice(-1)[0] ?? ''}`, { user: true });
    }
    // VALIDSIG <fpr> <date> <time> <expire> <version> <reserved> <algo> <hash> <class> <primary fpr>
    const valid = /^\[GNUPG:\] VALIDSIG (?:\S+ ){9}(\S+)/m.exec(status) ?? /^\[GNUPG:\] VALIDSIG (\S+)/m.exec(status);
    const good = /^\[GNUPG:\] GOODSIG \S+ (.*)$/m.exec(status);
    if (r.exitCode === 0 && valid && good) return { fingerprint: valid[1]!, uid: good[1]!.trim() };
    const unknownKey = /^\[GNUPG:\] (?:ERRSIG|NO_PUBKEY) (\S+)/m.exec(status);
    const why = unknownKey
      ? `signed by key ${unknownKey[1]}, which is not among the trusted keys`
      : /^\[GNUPG:\] BADSIG/m.test(status)
        ? 'its signature does not match its content (BADSIG)'
        : /^\[GNUPG:\] EXPKEYSIG/m.test(status)
          ? 'signed by an expired key'
          : /^\[GNUPG:\] REVKEYSIG/m.test(status)
            ? 'signed by a revoked key'
            : /\[GNUPG:\]/.test(status)
              ? `the signature is not valid (${status.trim().split('\n').filter((l) => l.startsWith('[GNUPG:]')).map((l) => l.split(' ')[1]).join(' ')})`
              : 'it is not signed';
    throw new Ns8ctlError('commit_signature_invalid', `commit ${sha.slice(0, 12)} is not signed by a trusted key: ${why} (trusted keys: ${keys})`, { user: true });
  }

  /** The keyring of the trusted keys, (re)built when their files changed. */
  private async trustedKeyring(keys: string): Promise<string> {
    let files: string[];
    try {
      const st = await stat(keys);
      files = st.isDirectory() ? (await readdir(keys)).filter((f) => KEY_FILE.test(f)).sort().map((f) => path.join(keys, f)) : [keys];
    } catch (err) {
      throw new Ns8ctlError('trusted_keys_invalid', `trusted keys ${keys}: ${(err as Error).message}`, { user: true });
    }
    const hash = createHash('sha256');
    for (const f of files) hash.update(f).update('\0').update(await readFile(f)).update('\0');
    const digest = hash.digest('hex');
    const home = path.join(this.spec.cacheDir, '.git', 'ns8ctl-trusted-keys');
    if ((await readFile(path.join(home, 'keys.sha256'), 'utf8').catch(() => '')) === digest) return home;
    await rm(home, { recursive: true, force: true });
    await mkdir(home, { recursive: true, mode: 0o700 });
    const gpg = async (args: string[], purpose: string): Promise<string> => {
      try {
        return (await this.runner.run(['gpg', '--batch', '--no-tty', '--homedir', home, ...args], { purpose: `git source ${maskString(this.spec.url)}: ${purpose}`, timeoutMs: 30_000 })).stdout;
      } catch (err) {
        if (err instanceof CommandFailedError && err.code === 'command_missing') throw new Ns8ctlError('gpg_missing', 'verifying commit signatures needs gpg on PATH (Debian: apt-get install gnupg)', { user: true });
        throw new Ns8ctlError('trusted_keys_invalid', `trusted keys ${keys}: ${(err as Error).message}`, { cause: err, user: true });
      }
    };
    for (const f of files) await gpg(['--import', f], `import trusted key ${f}`);
    const listed = await gpg(['--list-keys', '--with-colons'], 'list the trusted keys');
    if (!/^pub:/m.test(listed)) throw new Ns8ctlError('trusted_keys_invalid', `trusted keys ${keys}: no OpenPGP public key found${files.length ? '' : ' (no *.asc, *.gpg, *.pub or *.key file in the directory)'}`, { user: true });
    await writeFile(path.join(home, 'keys.sha256'), digest);
    return home;
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
