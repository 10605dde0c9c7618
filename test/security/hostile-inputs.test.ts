/**
 * Runs the hostile-input corpus (corpus.ts) against a real redis-server holding a small baseline
 * state with a secret in it. Each case must be refused with its location (or a message naming the
 * input), within a per-case time bound, without a crash or stack trace, without any change in
 * Redis, and without a secret in stdout or stderr. Cases that could block a whole process run the
 * built CLI (dist/, `npm test` builds it) in a child process that is killed at the bound; the
 * others run main() in-process with a watchdog.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { main } from '../../src/cli/main.js';
import { readBoundedStdin } from '../../src/manifest/read-input.js';
import { dumpRedis } from '../support/redis-dump.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { BASELINE_SECRET, CORPUS, OUTSIDE_SECRET, type Case } from './corpus.js';

const BIN = path.resolve('dist/src/cli/bin.js');
/** Longest a case may take before it counts as hung (generous: the machine may be loaded). */
const CASE_BOUND_MS = 30_000;

interface Outcome {
  code: number | null;
  stdout: string;
  stderr: string;
  hung: boolean;
  threw?: unknown;
}

const baseEnv = (url: string, dir: string): NodeJS.ProcessEnv => ({ PATH: process.env.PATH, HOME: process.env.HOME, NS8CTL_OFFLINE: '1', NS8CTL_REDIS_URL: url, NS8CTL_STATE_DIR: path.join(dir, '.state') });

async function runInProcess(args: string[], env: NodeJS.ProcessEnv, c: Case, dir: string): Promise<Outcome> {
  let stdout = '';
  let stderr = '';
  const source = c.stdin;
  const run = main(args, {
    stdout: (t) => void (stdout += t),
    stderr: (t) => void (stderr += t),
    env,
    isTTY: false,
    stdin: source ? () => readBoundedStdin(undefined, source()) : async () => '',
    cwd: dir,
  }).then(
    (code): Outcome => ({ code, stdout, stderr, hung: false }),
    (threw: unknown): Outcome => ({ code: null, stdout, stderr, hung: false, threw }),
  );
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<Outcome>((resolve) => (timer = setTimeout(() => resolve({ code: null, stdout, stderr, hung: true }), CASE_BOUND_MS)));
  const out = await Promise.race([run, bound]);
  clearTimeout(timer);
  return out;
}

async function runSpawned(args: string[], env: NodeJS.ProcessEnv, dir: string): Promise<Outcome> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { env, cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    let hung = false;
    const timer = setTimeout(() => {
      hung = true;
      child.kill('SIGKILL');
    }, CASE_BOUND_MS);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, hung });
    });
  });
}

const STACK = /\n\s+at .+[:(]\d+:\d+\)?|TypeError|ReferenceError|RangeError|Maximum call stack|Cannot read propert|is not a function|JavaScript heap/;
const LOCATED = /\S+:\d+:\d+ {2}\//;

describe('hostile inputs: refused with a location, bounded, no crash, nothing written, nothing leaked', () => {
  let srv: TestRedis;
  let redis: Redis;
  let root: string;

  beforeAll(async () => {
    srv = await startRedis();
    redis = srv.client();
    root = mkdtempSync(path.join(tmpdir(), 'ns8ctl-security-'));
    // The baseline: a node and an instance whose configuration holds a secret.
    const f = path.join(root, 'baseline.yaml');
    writeFileSync(
      f,
      'apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: {name: node1}\nspec: {id: 1, address: 127.0.0.1}\n---\n' +
        `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata: {name: webapp1}\nspec:\n  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0\n  node: 1\n  configuration: {title: Wiki, admin_password: "${BASELINE_SECRET}"}\n`,
    );
    const out = await runInProcess(['apply', '-f', f], baseEnv(srv.url, root), { name: 'baseline', args: () => [], where: 'file' }, root);
    if (out.code !== 0) throw new Error(`baseline apply failed: ${out.stderr}`);
  });

  afterAll(async () => {
    await srv.stop();
    rmSync(root, { recursive: true, force: true });
  });

  it(`refuses every one of the ${CORPUS.length} cases of the corpus`, async () => {
    const tally = { tried: 0, located: 0, hung: 0, crashed: 0, wrote: 0, leaked: 0 };
    const failures: string[] = [];
    // Cases of areas another branch reworks may still fail here; they are listed, not hidden.
    const pending: string[] = [];
    for (const c of CORPUS) {
      const dir = mkdtempSync(path.join(root, 'case-'));
      const args = c.args(dir);
      const env = { ...baseEnv(srv.url, dir), ...(c.env?.(srv.url) ?? {}) };
      const before = await dumpRedis(redis);
      const out = c.spawn ? await runSpawned(args, env, dir) : await runInProcess(args, env, c, dir);
      const after = await dumpRedis(redis);
      tally.tried++;
      const text = out.stdout + out.stderr;
      const problems: string[] = [];
      if (out.hung) {
        tally.hung++;
        problems.push('hung');
      }
      if (out.threw !== undefined || STACK.test(text) || (out.code !== null && out.code > 3)) {
        tally.crashed++;
        problems.push(`crashed (exit ${String(out.code)}): ${String(out.threw ?? '')}`);
      }
      const refused = !out.hung && out.code !== null && out.code !== 0;
      const located = refused && (c.where === 'file' ? LOCATED.test(out.stderr) : c.where.test(out.stderr));
      if (located) tally.located++;
      else problems.push(refused ? 'refused without the expected location' : `not refused (exit ${String(out.code)})`);
      if (JSON.stringify(before) !== JSON.stringify(after)) {
        tally.wrote++;
        problems.push('Redis changed');
      }
      const leaked = [BASELINE_SECRET, OUTSIDE_SECRET, ...(c.secrets ?? [])].filter((s) => text.includes(s));
      if (leaked.length > 0) {
        tally.leaked++;
        problems.push(`leaked ${leaked.join(', ')}`);
      }
      const extra = c.after?.(dir);
      if (extra) problems.push(extra);
      if (problems.length > 0) (c.dependsOn ? pending : failures).push(`${c.name}${c.dependsOn ? ` [${c.dependsOn}]` : ''}: ${problems.join('; ')}\n    ${out.stderr.slice(0, 300).replace(/\n/g, '\n    ')}`);
      rmSync(dir, { recursive: true, force: true });
    }
    console.log(`tried ${tally.tried}, refused with location ${tally.located}, hung ${tally.hung}, crashed ${tally.crashed}, wrote-when-refused ${tally.wrote}, leaked ${tally.leaked}`);
    if (pending.length > 0) console.log(`cases waiting for other branches:\n${pending.join('\n')}`);
    expect(failures).toEqual([]);
    expect(tally.tried).toBeGreaterThanOrEqual(100);
  }, 900_000);
});
