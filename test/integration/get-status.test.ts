import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { getCommand } from '../../src/cli/commands/get.js';
import type { CliDeps } from '../../src/cli/deps.js';
import { cond, summarizeModule, type ModuleFacts } from '../../src/controller/conditions.js';
import { summaryFields } from '../../src/controller/module-reconciler.js';
import { writeSourceStatus, type SourceStatus } from '../../src/controller/source-status.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { keys } from '../../src/state/keys.js';
import { runCli } from '../support/cli.js';
import { useCliProject } from '../support/cli-project.js';

const node = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata:\n  name: node1\nspec:\n  id: 1\n`;
const IMAGE = '127.0.0.1:5000/ns8ctl-fixtures/webapp';

const mod = (name: string, extra = ''): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata:
  name: ${name}
spec:
  image: ${IMAGE}:1.0.0
  node: 1
${extra}`;

const ready = (generation: number, extra: Record<string, string> = {}): Record<string, string> => ({
  node: '1',
  observedGeneration: String(generation),
  conditions: JSON.stringify([
    { type: 'Ready', status: 'True', reason: 'Converged', message: 'running' },
    { type: 'Progressing', status: 'False', reason: 'Converged', message: 'done' },
    { type: 'Degraded', status: 'False', reason: 'Converged', message: 'ok' },
  ]),
  imageUrl: `${IMAGE}:1.0.0`,
  imageDigest: 'sha256:0',
  ports: '{}',
  units: '[]',
  drift: '[]',
  ...extra,
});

describe('ns8ctl get against a real Redis: secrets, controller conditions, sources', () => {
  const t = useCliProject('ns8ctl-get-', { NS8CTL_CORE_VERSION: '3.21.0' });

  async function apply(docs: Record<string, string>): Promise<void> {
    const m = path.join(t.dir, 'm');
    mkdirSync(m, { recursive: true });
    for (const [f, text] of Object.entries(docs)) writeFileSync(path.join(m, f), text);
    const res = await runCli(['apply', '-f', m], t.env);
    expect(res.stderr).toContain('Applied');
  }

  /** Runs getCommand in-process (the options main() passes), capturing stdout. */
  async function get(resource: string, name: string | undefined, opts: { output?: string; showSecrets?: boolean }): Promise<{ code: number; stdout: string }> {
    let stdout = '';
    const deps: CliDeps = {
      stdout: (text) => void (stdout += text),
      stderr: () => undefined,
      env: t.env,
      isTTY: false,
      runner: new ProcessRunner(),
      connect: async () => ({ redis: t.redis, url: t.srv.url, embedded: false }),
      stdin: async () => '',
      cwd: t.dir,
    };
    const code = await getCommand(resource, name, opts, deps);
    return { code, stdout };
  }

  /** Stores a controller summary the way the controller does, from its own summarizeModule. */
  async function storeSummary(facts: ModuleFacts): Promise<void> {
    await t.redis.hset(keys.objectConditions('Module', facts.id), summaryFields(summarizeModule(facts)));
  }

  it('masks secret values of get -o json and -o yaml, as plans do, and shows them with showSecrets', async () => {
    await apply({ 'node.yaml': node, 'a.yaml': mod('webapp1', '  configuration:\n    admin_password: Pa55-w0rd\n    apiToken: tok-123\n    title: Hello\n    backup_url: https://u:urlpw@backup.example/\n') });
    const json = await runCli(['get', 'modules', 'webapp1', '-o', 'json'], t.env);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout).spec.configuration).toEqual({
      admin_password: '(sensitive value)',
      apiToken: '(sensitive value)',
      title: 'Hello',
      backup_url: 'https://u:(sensitive value)@backup.example/',
    });
    const yaml = await runCli(['get', 'modules', '-o', 'yaml'], t.env);
    expect(yaml.stdout).toContain('admin_password: (sensitive value)');
    for (const out of [json.stdout, yaml.stdout]) {
      expect(out).not.toContain('Pa55-w0rd');
      expect(out).not.toContain('tok-123');
      expect(out).not.toContain('urlpw');
    }
    const shown = await get('modules', 'webapp1', { output: 'json', showSecrets: true });
    expect(JSON.parse(shown.stdout).spec.configuration).toMatchObject({ admin_password: 'Pa55-w0rd', apiToken: 'tok-123', backup_url: 'https://u:urlpw@backup.example/' });
    expect((await get('modules', undefined, { output: 'yaml', showSecrets: true })).stdout).toContain('admin_password: Pa55-w0rd');
    expect((await runCli(['get', 'modules', 'webapp1', '-o', 'yaml', '--show-secrets'], t.env)).stdout).toContain('admin_password: Pa55-w0rd');
  });

  it('masks a password in a repository URL in the table and json, unless showSecrets', async () => {
    await apply({ 'r.yaml': `apiVersion: ns8ctl.nethserver.org/v1\nkind: Repository\nmetadata:\n  name: private\nspec:\n  url: https://me:repopw@repo.example/ns8/\n  enabled: false\n` });
    const table = await runCli(['get', 'repositories'], t.env);
    expect(table.stdout).toContain('https://me:(sensitive value)@repo.example/ns8/');
    expect(table.stdout).not.toContain('repopw');
    expect((await runCli(['get', 'repositories', '-o', 'json'], t.env)).stdout).not.toContain('repopw');
    expect((await get('repositories', undefined, { showSecrets: true })).stdout).toContain('https://me:repopw@repo.example/ns8/');
  });

  it('shows the controller conditions: Stalled (ConfigurationFailed), Drifted and Suspended in STATUS and status.conditions', async () => {
    await apply({ 'node.yaml': node, 'a.yaml': mod('webapp1'), 'b.yaml': mod('webapp2'), 'c.yaml': mod('webapp3'), 'd.yaml': mod('webapp4') });
    for (const id of ['webapp1', 'webapp2', 'webapp3', 'webapp4']) await t.redis.hset(keys.moduleStatus(id), ready(1, id === 'webapp2' ? { drift: JSON.stringify(['environment TCP_PORT edited']) } : {}));
    const agent = (id: string, drift: string[] = []): ModuleFacts['agent'] => ({
      id, node: 1, observedGeneration: 1, imageUrl: `${IMAGE}:1.0.0`, imageDigest: 'sha256:0', ports: {}, units: [], drift,
      conditions: [{ type: 'Ready', status: 'True', reason: 'Converged', message: 'running' }],
    });
    const facts = (id: string): ModuleFacts => ({ id, generation: 1, revision: '', source: 'a.yaml', deleting: false, node: 1, agent: agent(id) });
    await storeSummary({ ...facts('webapp1'), configuration: { failed: 'configure-module exited 2: greeting must be a string' } });
    await storeSummary({ ...facts('webapp2'), agent: agent('webapp2', ['environment TCP_PORT edited']) });
    await storeSummary({ ...facts('webapp3'), suspended: { reason: 'maintenance' } });
    // A summary of an older generation says nothing about the current one.
    await storeSummary({ ...facts('webapp4'), generation: 0, configuration: { failed: 'old failure' } });

    const table = (await runCli(['get', 'modules'], t.env)).stdout;
    const statusOf = (id: string): string => table.split('\n').find((l) => l.startsWith(`${id} `))!.split(/ {3,}/)[5]!;
    expect(statusOf('webapp1')).toBe('Stalled (ConfigurationFailed)');
    expect(statusOf('webapp2')).toBe('Ready, Drifted');
    expect(statusOf('webapp3')).toBe('Ready, Suspended');
    expect(statusOf('webapp4')).toBe('Ready');

    const doc = JSON.parse((await runCli(['get', 'modules', 'webapp1', '-o', 'json'], t.env)).stdout);
    expect(doc.status.conditions.map((c: { type: string; status: string; reason: string }) => `${c.type}=${c.status}/${c.reason}`)).toEqual([
      'Ready=False/ConfigurationFailed',
      'Reconciling=False/ConfigurationFailed',
      'Stalled=True/ConfigurationFailed',
      'Drifted=False/NoDrift',
      'Progressing=False/Converged',
      'Degraded=False/Converged',
    ]);
    const y = YAML.parse((await runCli(['get', 'modules', 'webapp3', '-o', 'yaml'], t.env)).stdout);
    expect(y.status.suspended).toBe(true);
    const old = JSON.parse((await runCli(['get', 'modules', 'webapp4', '-o', 'json'], t.env)).stdout);
    expect(old.status.conditions.map((c: { type: string }) => c.type)).toEqual(['Ready', 'Progressing', 'Degraded']);
  });

  it('shows the node agent target image in -o wide and status.targetImage', async () => {
    await apply({ 'node.yaml': node, 'a.yaml': mod('webapp1') });
    await t.redis.hset(keys.moduleStatus('webapp1'), ready(1, { targetImage: `${IMAGE}:2.0.0` }));
    const wide = (await runCli(['get', 'modules', '-o', 'wide'], t.env)).stdout.split('\n');
    expect(wide[0]).toMatch(/^NAME +MODULE +VERSION +NODE +GEN +STATUS +IMAGE +TARGET +UPDATE +PORTS +LAST BACKUP +SOURCE$/);
    const cell = (row: string, from: string, to: string): string => row.slice(wide[0]!.indexOf(from), wide[0]!.indexOf(to)).trim();
    expect(cell(wide[1]!, 'IMAGE', 'TARGET')).toBe(`${IMAGE}:1.0.0`);
    expect(cell(wide[1]!, 'TARGET', 'UPDATE')).toBe(`${IMAGE}:2.0.0`);
    expect(JSON.parse((await runCli(['get', 'modules', 'webapp1', '-o', 'json'], t.env)).stdout).status.targetImage).toBe(`${IMAGE}:2.0.0`);
  });

  it('shows the last backup of each instance in -o wide and every schedule\'s last run in status.backups', async () => {
    const dest = `apiVersion: ns8ctl.nethserver.org/v1\nkind: BackupDestination\nmetadata:\n  name: nas\nspec:\n  url: /srv/backup\n`;
    const sched = (name: string) => `apiVersion: ns8ctl.nethserver.org/v1\nkind: BackupSchedule\nmetadata:\n  name: ${name}\nspec:\n  destination: nas\n  instances: [webapp1]\n  schedule: daily\n`;
    await apply({ 'node.yaml': node, 'a.yaml': mod('webapp1'), 'b.yaml': mod('webapp2'), 'd.yaml': dest, 's1.yaml': sched('nightly'), 's2.yaml': sched('weekly') });
    const now = Math.floor(Date.now() / 1000);
    await t.redis.hset('module/webapp1/backup_status/nightly', { destination: 'nas', start: String(now - 7260), end: String(now - 7200), errors: '0', snapshot: 'abcdef0123456789', snapshots_count: '3', total_size: '4096', added_size: '12', duration_ms: '1500', last_success: new Date((now - 7200) * 1000).toISOString() });
    await t.redis.hset('module/webapp1/backup_status/weekly', { destination: 'nas', start: String(now - 400), end: String(now - 300), errors: '1', error_message: 'restic: repository locked' });
    const wide = (await runCli(['get', 'modules', '-o', 'wide'], t.env)).stdout.split('\n');
    const cell = (row: string): string => row.slice(wide[0]!.indexOf('LAST BACKUP'), wide[0]!.indexOf('SOURCE')).trim();
    expect(cell(wide.find((l) => l.startsWith('webapp1'))!)).toMatch(/^weekly 5m([0-9]+s)? ago FAILED$/);
    expect(cell(wide.find((l) => l.startsWith('webapp2'))!)).toBe('-');
    const doc = JSON.parse((await runCli(['get', 'modules', 'webapp1', '-o', 'json'], t.env)).stdout);
    expect(doc.status.backups.nightly).toMatchObject({ destination: 'nas', result: 'succeeded', snapshot: 'abcdef0123456789', snapshots: 3, sizeBytes: 4096, addedBytes: 12, durationMs: 1500 });
    expect(doc.status.backups.weekly).toMatchObject({ result: 'failed', error: 'restic: repository locked' });
  });

  it('lists controller sources with kind, url, branch, short revision, status and last applied time', async () => {
    const base = (name: string): SourceStatus => ({
      name, kind: 'git', url: 'https://git.example/ops/manifests.git', branch: 'main', path: 'clusters/a', prune: true,
      conditions: [cond('Ready', 'True', 'Applied', 'desired state matches commit 0123456789ab (3 objects)'), cond('Reconciling', 'False', 'Applied', 'idle'), cond('Stalled', 'False', 'NotStalled', 'ok'), cond('Drifted', 'False', 'NoDrift', 'none')],
      lastAppliedRevision: '0123456789abcdef0123456789abcdef01234567', lastAttemptedRevision: '0123456789abcdef0123456789abcdef01234567', lastAppliedDigest: 'x',
      lastAppliedTime: '2026-11-20T10:00:00.000Z', lastError: '', driftedKeys: [],
    });
    await writeSourceStatus(t.redis, undefined, base('prod'), new Date('2026-11-20T10:00:00Z'));
    await writeSourceStatus(
      t.redis,
      undefined,
      {
        ...base('lab'), kind: 'directory', url: '/t.srv/manifests', branch: '', lastAppliedRevision: '', lastError: 'manifest_invalid',
        conditions: [cond('Ready', 'False', 'ValidationFailed', '1 problem in /t.srv/manifests'), cond('Reconciling', 'False', 'ValidationFailed', 'stopped'), cond('Stalled', 'True', 'ValidationFailed', 'fix the manifests'), cond('Drifted', 'False', 'NoDrift', 'none')],
      },
      new Date('2026-11-20T10:00:00Z'),
    );
    const table = await runCli(['get', 'sources'], t.env);
    expect(table.code).toBe(0);
    expect(table.stdout.split('\n').map((l) => l.split(/ {3,}/).join('|'))).toEqual([
      'NAME|KIND|URL|BRANCH|REVISION|STATUS|LAST APPLIED',
      'lab|directory|/t.srv/manifests|-|-|Stalled (ValidationFailed)|2026-11-20T10:00:00.000Z',
      'prod|git|https://git.example/ops/manifests.git|main|0123456789ab|Ready|2026-11-20T10:00:00.000Z',
      '',
    ]);
    const one = JSON.parse((await runCli(['get', 'sources', 'prod', '-o', 'json'], t.env)).stdout);
    expect(one).toMatchObject({ kind: 'Source', metadata: { name: 'prod' }, spec: { kind: 'git', branch: 'main', path: 'clusters/a', prune: true }, status: { lastAppliedRevision: '0123456789abcdef0123456789abcdef01234567', lastError: '' } });
    expect(one.status.conditions[0]).toMatchObject({ type: 'Ready', status: 'True', reason: 'Applied' });
    expect(YAML.parse((await runCli(['get', 'sources', '-o', 'yaml'], t.env)).stdout).items.map((i: { metadata: { name: string } }) => i.metadata.name)).toEqual(['lab', 'prod']);
    const wide = (await runCli(['get', 'sources', '-o', 'wide'], t.env)).stdout;
    expect(wide).toContain('LAST ERROR');
    expect(wide).toContain('manifest_invalid');
    const missing = await runCli(['get', 'sources', 'nope'], t.env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('source "nope" has no status');
    expect((await runCli(['get', 'widgets'], t.env)).stderr).toContain('allowed: modules, repositories, nodes, backupdestinations (bd), backupschedules (bs), sources');
  });
});
