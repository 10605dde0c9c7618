/**
 * Git sources with --trusted-keys: only commits signed by a trusted OpenPGP key are applied.
 * Real gpg keys made here (no passphrase), real signed commits pushed to a bare repository, a
 * real Redis and the real controller. An unsigned commit, or one signed by a key that is not
 * trusted, is rejected like a bad commit: the last good one stays, the reason is in status and
 * events; removing a key from the trusted files stops trusting it.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { Controller } from '../../src/controller/controller.js';
import { readEvents } from '../../src/state/events.js';
import { createLogger } from '../../src/runtime/log.js';
import { readSourceStatus } from '../../src/controller/source-status.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { GIT_ENV, gitRemote, type GitRemote } from '../support/git-remote.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait-for.js';

const NODE = 'apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: {name: node1}\nspec: {id: 1}\n';
const mod = (tag: string): string => `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: webapp1\nspec:\n  image: 127.0.0.1:5000/ns8ctl-examples/webapp:${tag}\n  node: 1\n`;

/** A signing key in its own GNUPGHOME; `pub` is its exported public key file. */
function makeKey(dir: string, name: string): { home: string; fpr: string; pub: string } {
  const home = path.join(dir, `gnupg-${name}`);
  mkdirSync(home, { mode: 0o700 });
  const gpg = (...args: string[]): string => execFileSync('gpg', ['--batch', '--homedir', home, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  gpg('--passphrase', '', '--quick-gen-key', `${name} <${name.toLowerCase()}@example.org>`, 'ed25519', 'sign', 'never');
  const fpr = /^fpr:+([0-9A-F]{40}):/m.exec(gpg('--list-keys', '--with-colons'))![1]!;
  const pub = path.join(dir, `${name}.asc`);
  writeFileSync(pub, gpg('--armor', '--export', fpr));
  return { home, fpr, pub };
}

let srv: TestRedis;
let redis: Redis;
let dir: string;
let repo: GitRemote;
let controller: Controller | undefined;
let ops: ReturnType<typeof makeKey>;
let stranger: ReturnType<typeof makeKey>;

beforeAll(async () => {
  srv = await startRedis();
  redis = srv.client();
  dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-git-sig-'));
  ops = makeKey(dir, 'Ops');
  stranger = makeKey(dir, 'Stranger');
  repo = gitRemote(dir);
  mkdirSync(path.join(dir, 'trusted'));
}, 60_000);

afterAll(async () => {
  await controller?.stop();
  await srv?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const signedBy = (key: ReturnType<typeof makeKey>) => ({ flags: [`--gpg-sign=${key.fpr}`], env: { ...GIT_ENV, GNUPGHOME: key.home } });
const status = () => readSourceStatus(redis, 'default');
const image = async (): Promise<string | undefined> => {
  const h = await redis.hget('ns8ctl/desired/module/webapp1', 'object');
  return h ? (JSON.parse(h) as { spec: { image: string } }).spec.image : undefined;
};

test('only commits signed by a trusted key are applied; others are rejected and the last good one stays', async () => {
  writeFileSync(path.join(dir, 'trusted', 'ops.asc'), execFileSync('cat', [ops.pub]));
  const runner = new ProcessRunner();
  const verifications = () => runner.history.filter((c) => c.argv.includes('verify-commit')).length;
  const good = repo.commit({ 'node.yaml': NODE, 'wiki.yaml': mod('1.0.0') }, 'first', signedBy(ops));
  controller = new Controller(
    {
      sources: [{ name: 'default', kind: 'git', paths: [], prune: false, selfHeal: true, git: { url: repo.remote, branch: 'main', path: '.', cacheDir: path.join(dir, 'cache'), intervalMs: 300, trustedKeys: path.join(dir, 'trusted') } }],
      resyncMs: 0,
      leaseMs: 5000,
      http: { port: 0 },
      backoff: { baseMs: 100, maxMs: 1000, jitter: 0 },
    },
    { redis: srv.client(), runner, logger: createLogger('text', () => undefined) },
  );
  await controller.start();
  await waitFor('the signed commit applied', async () => (await status())?.lastAppliedRevision === good);
  expect(await image()).toMatch(/:1\.0\.0$/);
  const applied = (await readEvents(redis)).filter((e) => e.name === 'source-applied');
  expect(applied.at(-1)!.data).toMatchObject({ revision: good, signer: 'Ops <ops@example.org>', signerFingerprint: ops.fpr });
  expect(applied.at(-1)!.message).toContain(`signed by Ops <ops@example.org> (${ops.fpr.slice(-16)})`);
  // Drift repair of the same commit does not verify it again (no git or gpg spawned for it).
  const checks = verifications();
  const h = await redis.hget('ns8ctl/desired/module/webapp1', 'object');
  await redis.hset('ns8ctl/desired/module/webapp1', 'object', h!.replace(':1.0.0', ':7.7.7'));
  await waitFor('drift repaired', async () => (await image())?.endsWith(':1.0.0'));
  expect(verifications()).toBe(checks);

  // Unsigned: rejected before its files are used.
  const unsigned = repo.commit({ 'wiki.yaml': mod('6.6.6') }, 'unsigned bump');
  const st = await waitFor('the unsigned commit rejected', async () => {
    const s = await status();
    return s?.lastAttemptedRevision === unsigned ? s : undefined;
  });
  expect(st).toMatchObject({ lastAppliedRevision: good, lastError: 'commit_signature_invalid' });
  const ready = st.conditions.find((c) => c.type === 'Ready')!;
  expect(ready).toMatchObject({ status: 'False', reason: 'SignatureInvalid' });
  expect(ready.message).toContain(`commit ${unsigned.slice(0, 12)} is not signed by a trusted key: it is not signed`);
  expect(ready.message).toContain(`keeps commit ${good.slice(0, 12)}`);
  expect(await image()).toMatch(/:1\.0\.0$/);
  const rejected = (await readEvents(redis)).filter((e) => e.name === 'source-rejected');
  expect(rejected.at(-1)!.data).toMatchObject({ revision: unsigned, subject: 'unsigned bump' });

  // Signed, but by a key nobody trusts.
  const foreign = repo.commit({ 'wiki.yaml': mod('6.6.7') }, 'stranger bump', signedBy(stranger));
  const st2 = await waitFor('the stranger commit rejected', async () => {
    const s = await status();
    return s?.lastAttemptedRevision === foreign ? s : undefined;
  });
  expect(st2.conditions.find((c) => c.type === 'Ready')!.message).toMatch(new RegExp(`signed by key \\w*${stranger.fpr.slice(-16)}, which is not among the trusted keys`));
  expect(await image()).toMatch(/:1\.0\.0$/);

  // Signed by the trusted key again: applied.
  const fixed = repo.commit({ 'wiki.yaml': mod('1.1.0') }, 'signed bump', signedBy(ops));
  await waitFor('the next signed commit applied', async () => (await status())?.lastAppliedRevision === fixed);
  expect(await image()).toMatch(/:1\.1\.0$/);
  expect((await status())!.conditions.find((c) => c.type === 'Ready')).toMatchObject({ status: 'True' });

  // Trusting the stranger instead of ops (the files changed): ops's next commit is refused.
  rmSync(path.join(dir, 'trusted', 'ops.asc'));
  writeFileSync(path.join(dir, 'trusted', 'stranger.asc'), execFileSync('cat', [stranger.pub]));
  const opsAgain = repo.commit({ 'wiki.yaml': mod('1.2.0') }, 'ops bump', signedBy(ops));
  const st3 = await waitFor('the ops commit rejected once ops is no longer trusted', async () => {
    const s = await status();
    return s?.lastAttemptedRevision === opsAgain ? s : undefined;
  });
  expect(st3).toMatchObject({ lastAppliedRevision: fixed, lastError: 'commit_signature_invalid' });
  expect(await image()).toMatch(/:1\.1\.0$/);
}, 60_000);
