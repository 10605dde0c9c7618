/**
 * Secrets stay out of every output path reachable from the CLI and the controller: diff, apply,
 * get -o table|wide|json|yaml, events, source status, the audit log, errors and debug logs. The secrets sit
 * under names the documented rule catches (`*_password`, `*_pw`, `*_token`), in a URL whose
 * password holds `@`, and in a `?password=` parameter; a link in the source directory points at
 * a password file outside it.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { main } from '../../src/cli/main.js';
import { readSourceStatus } from '../../src/controller/source-status.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait-for.js';

const SECRETS = ['Adm1n-Out-Pw-1', 'Db-Out-Pw-2', 'ss-Out-Pw-3', 'Query-Out-Pw-4', 'Tok-Out-5', 'File-Out-Pw-6', '77123456789', 'Restic-Out-Pw-8', 'Rest-Url-Out-Pw-9'];
const MANIFEST = `apiVersion: ns8ctl.nethserver.org/v1
kind: Node
metadata: {name: node1}
spec: {id: 1}
---
apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata:
  name: webapp1
  labels: {api_token: Tok-Out-5}
spec:
  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0
  node: 1
  configuration:
    admin_password: Adm1n-Out-Pw-1
    db_pw: Db-Out-Pw-2
    smtp_url: "smtp://alice:p@ss-Out-Pw-3@mail.example.org/"
    cache_url: "redis://cache:6379/0?password=Query-Out-Pw-4"
---
apiVersion: ns8ctl.nethserver.org/v1
kind: BackupDestination
metadata: {name: offsite}
spec:
  url: "rest:https://alice:Rest-Url-Out-Pw-9@backup.example.org:8000/ns8"
`;

function leaks(text: string): string[] {
  return SECRETS.filter((s) => text.includes(s));
}

describe('secrets on every output path', () => {
  let srv: TestRedis;
  let redis: Redis;
  let dir: string;
  beforeAll(async () => {
    srv = await startRedis();
    redis = srv.client();
    dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-secret-out-'));
  });
  afterAll(async () => {
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function cli(args: string[]): Promise<string> {
    let out = '';
    await main(args, { stdout: (t) => void (out += t), stderr: (t) => void (out += t), env: { PATH: process.env.PATH, HOME: process.env.HOME, NS8CTL_OFFLINE: '1', NS8CTL_DEBUG: '1', NS8CTL_REDIS_URL: srv.url, NS8CTL_STATE_DIR: path.join(dir, 'state') }, isTTY: false, stdin: async () => '', cwd: dir });
    return out;
  }

  it('diff, apply, get (table, wide, json, yaml) and validation errors show none of them', async () => {
    const f = path.join(dir, 'm.yaml');
    writeFileSync(f, MANIFEST);
    const outputs: Record<string, string> = {};
    outputs['diff'] = await cli(['diff', '-f', f]);
    outputs['diff json'] = await cli(['diff', '-f', f, '-o', 'json']);
    outputs['apply'] = await cli(['apply', '-f', f]);
    expect(await redis.exists('ns8ctl/desired/module/webapp1')).toBe(1);
    for (const o of ['table', 'wide', 'json', 'yaml']) outputs[`get modules -o ${o}`] = await cli(['get', 'modules', '-o', o]);
    outputs['get module webapp1 -o yaml'] = await cli(['get', 'module', 'webapp1', '-o', 'yaml']);
    // The restic password of the destination: stored, then every output about it.
    const pw = path.join(dir, 'restic.pw');
    writeFileSync(pw, 'Restic-Out-Pw-8\n');
    outputs['backup set-password'] = await cli(['backup', 'set-password', 'offsite', '--password-file', pw]);
    outputs['backup set-password json'] = await cli(['backup', 'set-password', 'offsite', '--password-file', pw, '-o', 'json']);
    expect(await redis.hget('ns8ctl/secret/backup_destination/offsite', 'password')).toBe('Restic-Out-Pw-8');
    writeFileSync(pw, 'Restic-Out-Pw-8\nRestic-Out-Pw-8\n');
    outputs['backup set-password refused'] = await cli(['backup', 'set-password', 'offsite', '--password-file', pw]);
    expect(outputs['backup set-password refused']).toContain('backup password is refused');
    for (const o of ['table', 'wide', 'json', 'yaml']) outputs[`get backupdestinations -o ${o}`] = await cli(['get', 'backupdestinations', '-o', o]);
    expect(outputs['get backupdestinations -o table']).toMatch(/offsite .* set /);
    writeFileSync(f, MANIFEST.replace('labels: {api_token: Tok-Out-5}', 'labels: {api_token: Tok-Out-5, smtp_pw: 77123456789}'));
    outputs['apply error'] = await cli(['apply', '-f', f]);
    outputs['apply error json'] = await cli(['apply', '-f', f, '-o', 'json']);
    expect(outputs['apply error']).toContain('smtp_pw: expected string, got integer (sensitive value)');
    expect(outputs['diff']).toContain('admin_password');
    const found = Object.entries(outputs).flatMap(([where, text]) => leaks(text).map((s) => `${where}: ${s}`));
    expect(found).toEqual([]);
  });

  it('the controller publishes no secret in events, source status or logs when a source links to a password file', async () => {
    const bin = path.resolve('dist/src/cli/bin.js');
    if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`npm run build\` first (npm test does)`);
    const m = path.join(dir, 'src');
    mkdirSync(m);
    writeFileSync(path.join(dir, 'admin.password'), 'File-Out-Pw-6\n');
    writeFileSync(path.join(m, 'm.yaml'), MANIFEST.replace('labels: {api_token: Tok-Out-5}', 'labels: {db_password: 77123456789}'));
    symlinkSync(path.join(dir, 'admin.password'), path.join(m, 'admin.yaml'));
    const child = spawn(process.execPath, [bin, '--redis', srv.url, 'controller', '-f', m, '--http-port', '0', '--source-name', 'linked', '--audit-log', path.join(dir, 'audit.log')], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH, HOME: process.env.HOME, NS8CTL_OFFLINE: '1', NS8CTL_DEBUG: '1', NS8CTL_STATE_DIR: path.join(dir, 'cstate') },
    });
    let log = '';
    child.stdout!.on('data', (b: Buffer) => (log += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (log += b.toString()));
    const exited = new Promise((r) => child.once('exit', r));
    try {
      const status = await waitFor('the source to be rejected', async () => ((await readSourceStatus(redis, 'linked'))?.lastError ? readSourceStatus(redis, 'linked') : undefined));
      const events = await waitFor('the source-rejected event', async () => {
        const e = await cli(['events', '-o', 'json']);
        return e.includes('source-rejected') ? e : undefined;
      });
      const outputs: Record<string, string> = {
        status: JSON.stringify(status),
        events,
        'events text': await cli(['events']),
        'get sources -o wide': await cli(['get', 'sources', '-o', 'wide']),
        'get sources -o json': await cli(['get', 'sources', '-o', 'json']),
        'get sources -o yaml': await cli(['get', 'sources', '-o', 'yaml']),
      };
      expect(outputs['events']).toContain('symbolic link points outside');
      child.kill('SIGTERM');
      await exited;
      outputs['controller log'] = log;
      outputs['audit log'] = await waitFor('the audit log entry', () => {
        const text = existsSync(path.join(dir, 'audit.log')) ? readFileSync(path.join(dir, 'audit.log'), 'utf8') : '';
        return text.includes('source-rejected') ? text : undefined;
      });
      const found = Object.entries(outputs).flatMap(([where, text]) => leaks(text).map((s) => `${where}: ${s}`));
      expect(found).toEqual([]);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
