import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildControllerOptions, DEFAULT_HTTP_PORT } from '../../src/cli/commands/controller.js';
import { ignoredName } from '../../src/controller/directory-watch.js';
import { formatDuration, parseDuration } from '../../src/runtime/duration.js';
import { ControllerHttpServer, MAX_BODY_BYTES } from '../../src/controller/http-server.js';
import { formatLogLine, parseLogFormat } from '../../src/runtime/log.js';
import { ControllerMetrics, escapeLabelValue, Histogram } from '../../src/controller/metrics.js';
import { desiredDigest, pinSuspended } from '../../src/controller/source-reconciler.js';
import { hmacHex, safeEqual, verifyWebhook } from '../../src/controller/webhook-auth.js';
import { UsageError } from '../../src/errors.js';
import type { DesiredObject, ModuleObject } from '../../src/manifest/types.js';
import { emptyState } from '../../src/state/cluster-state.js';

describe('webhook secret checks', () => {
  const body = Buffer.from('{"ref":"refs/heads/main"}');
  it('accepts GitHub/Gitea HMAC signatures, GitLab tokens and bearer tokens made with the secret', () => {
    expect(verifyWebhook({ 'x-hub-signature-256': `sha256=${hmacHex('s', body)}` }, body, 's')).toBe(true);
    expect(verifyWebhook({ 'x-hub-signature-256': `sha256=${hmacHex('s', body).toUpperCase()}` }, body, 's')).toBe(true);
    expect(verifyWebhook({ 'x-gitea-signature': hmacHex('s', body) }, body, 's')).toBe(true);
    expect(verifyWebhook({ 'x-gitlab-token': 's' }, body, 's')).toBe(true);
    expect(verifyWebhook({ 'x-ns8ctl-token': 's' }, body, 's')).toBe(true);
    expect(verifyWebhook({ authorization: 'Bearer s' }, body, 's')).toBe(true);
  });

  it('refuses wrong secrets, a signature of another body, missing proof and an empty secret', () => {
    expect(verifyWebhook({ 'x-hub-signature-256': `sha256=${hmacHex('t', body)}` }, body, 's')).toBe(false);
    expect(verifyWebhook({ 'x-hub-signature-256': hmacHex('s', body) }, body, 's')).toBe(false);
    expect(verifyWebhook({ 'x-hub-signature-256': `sha256=${hmacHex('s', 'other')}` }, body, 's')).toBe(false);
    expect(verifyWebhook({ 'x-gitlab-token': 'S' }, body, 's')).toBe(false);
    expect(verifyWebhook({ authorization: 'Basic cw==' }, body, 's')).toBe(false);
    expect(verifyWebhook({}, body, 's')).toBe(false);
    expect(verifyWebhook({ 'x-gitlab-token': '' }, body, '')).toBe(false);
    expect(safeEqual('a', 'ab')).toBe(false);
    expect(safeEqual('ab', 'ab')).toBe(true);
  });
});

describe('HTTP endpoint', () => {
  let server: ControllerHttpServer;
  const triggered: string[] = [];
  let ready = true;
  beforeAll(async () => {
    server = new ControllerHttpServer({
      port: 0,
      health: () => ({ ok: true, detail: 'running' }),
      ready: () => ({ ok: ready, detail: ready ? 'leader' : 'Redis connection down' }),
      metrics: () => 'ns8ctl_x 1\n',
      webhook: { secret: 'k', trigger: (s) => (s === 'default' ? (triggered.push(s), true) : false) },
    });
    await server.start();
  });
  afterAll(() => server.stop());
  const url = (p: string): string => `http://127.0.0.1:${server.port}${p}`;

  it('answers probes and metrics on 127.0.0.1', async () => {
    expect(server.port).toBeGreaterThan(0);
    const h = await fetch(url('/healthz'));
    expect([h.status, await h.text()]).toEqual([200, 'ok: running\n']);
    ready = false;
    const r = await fetch(url('/readyz'));
    expect([r.status, await r.text()]).toEqual([503, 'not ok: Redis connection down\n']);
    ready = true;
    const m = await fetch(url('/metrics'));
    expect(m.headers.get('content-type')).toContain('text/plain; version=0.0.4');
    expect(await m.text()).toBe('ns8ctl_x 1\n');
    expect((await fetch(url('/nope'))).status).toBe(404);
    expect((await fetch(url('/metrics'), { method: 'POST' })).status).toBe(405);
  });

  it('triggers a source on an authenticated POST only', async () => {
    expect((await fetch(url('/hooks/default'))).status).toBe(405);
    expect((await fetch(url('/hooks/default'), { method: 'POST', body: 'x' })).status).toBe(401);
    expect((await fetch(url('/hooks/default'), { method: 'POST', body: 'x', headers: { 'x-gitlab-token': 'wrong' } })).status).toBe(401);
    expect(triggered).toEqual([]);
    expect((await fetch(url('/hooks/other'), { method: 'POST', body: 'x', headers: { 'x-gitlab-token': 'k' } })).status).toBe(404);
    const ok = await fetch(url('/hooks/default'), { method: 'POST', body: 'x', headers: { 'x-gitlab-token': 'k' } });
    expect(ok.status).toBe(202);
    expect(await ok.json()).toEqual({ source: 'default', fetch: 'started' });
    expect(triggered).toEqual(['default']);
    const big = await fetch(url('/hooks/default'), { method: 'POST', body: Buffer.alloc(MAX_BODY_BYTES + 1), headers: { 'x-gitlab-token': 'k' } }).catch(() => undefined);
    if (big) expect(big.status).toBe(413);
    expect(triggered).toEqual(['default']);
  });

  it('has no webhook without a secret', async () => {
    const s = new ControllerHttpServer({ port: 0, health: () => ({ ok: true, detail: '' }), ready: () => ({ ok: true, detail: '' }), metrics: () => '' });
    await s.start();
    try {
      expect((await fetch(`http://127.0.0.1:${s.port}/hooks/default`, { method: 'POST', body: 'x', headers: { 'x-gitlab-token': '' } })).status).toBe(404);
    } finally {
      await s.stop();
    }
  });

  it('names the address when the port is taken', async () => {
    const s = new ControllerHttpServer({ port: server.port, health: () => ({ ok: true, detail: '' }), ready: () => ({ ok: true, detail: '' }), metrics: () => '' });
    await expect(s.start()).rejects.toThrow(`cannot listen on 127.0.0.1:${server.port}`);
  });
});

describe('metrics', () => {
  it('renders cumulative histogram buckets, counters and computed gauges in the text format', () => {
    let depth = 3;
    const m = new ControllerMetrics({ depth: () => depth, inFlight: () => 1 });
    m.reconcileDuration.observe(0.02, { kind: 'source' });
    m.reconcileDuration.observe(3, { kind: 'source' });
    m.reconciles.inc({ kind: 'source', result: 'ok' });
    m.reconciles.inc({ kind: 'source', result: 'ok' });
    m.lastSuccessfulSync.set(1700000000, { source: 'default' });
    depth = 5;
    const text = m.render();
    expect(text).toContain('# TYPE ns8ctl_reconcile_duration_seconds histogram');
    expect(text).toContain('ns8ctl_reconcile_duration_seconds_bucket{kind="source",le="0.01"} 0');
    expect(text).toContain('ns8ctl_reconcile_duration_seconds_bucket{kind="source",le="0.025"} 1');
    expect(text).toContain('ns8ctl_reconcile_duration_seconds_bucket{kind="source",le="5"} 2');
    expect(text).toContain('ns8ctl_reconcile_duration_seconds_bucket{kind="source",le="+Inf"} 2');
    expect(text).toContain('ns8ctl_reconcile_duration_seconds_sum{kind="source"} 3.02');
    expect(text).toContain('ns8ctl_reconcile_duration_seconds_count{kind="source"} 2');
    expect(text).toContain('ns8ctl_reconcile_total{kind="source",result="ok"} 2');
    expect(text).toContain('ns8ctl_workqueue_depth 5');
    expect(text).toContain('ns8ctl_workqueue_in_flight 1');
    expect(text).toContain('ns8ctl_source_last_successful_sync_timestamp_seconds{source="default"} 1700000000');
    expect(text).toContain('ns8ctl_controller_leader 0');
    expect(text.endsWith('\n')).toBe(true);
    // Every non-comment line is `name{labels} value`.
    for (const line of text.trim().split('\n').filter((l) => !l.startsWith('#'))) expect(line).toMatch(/^[a-z_][a-z0-9_]*(\{[^}]*\})? [-+0-9.eInfNa]+$/);
  });

  it('escapes label values', () => {
    expect(escapeLabelValue('a"b\\c\nd')).toBe('a\\"b\\\\c\\nd');
    const h = new Histogram('h', 'help', [1]);
    h.observe(0.5, { p: 'x"y' });
    expect(h.render()).toContain('h_bucket{p="x\\"y",le="1"} 1');
  });
});

describe('logs', () => {
  const t = new Date('2025-01-01T00:00:00Z');
  it('writes one text or JSON line with the reconcile key, result and duration', () => {
    expect(formatLogLine('text', t, 'info', 'reconciled', { key: 'source/default', result: 'ok', duration_ms: 12 })).toBe('2025-01-01T00:00:00.000Z info  reconciled key=source/default result=ok duration_ms=12');
    expect(JSON.parse(formatLogLine('json', t, 'warn', 'reconciled', { key: 'Module/webapp1', result: 'error', error: 'Redis down' }))).toEqual({ time: '2025-01-01T00:00:00.000Z', level: 'warn', msg: 'reconciled', key: 'Module/webapp1', result: 'error', error: 'Redis down' });
    expect(formatLogLine('text', t, 'info', 'x', { error: 'two words' })).toContain('error="two words"');
  });

  it('masks secrets in messages and fields', () => {
    const line = formatLogLine('text', t, 'info', 'fetch https://bob:hunter2@git.example/x', { token: 'abc', url: 'https://u:pw@h/' });
    expect(line).not.toMatch(/hunter2|abc|pw@/);
    expect(() => parseLogFormat('xml')).toThrow(UsageError);
    expect(parseLogFormat(undefined)).toBe('text');
  });
});

describe('durations', () => {
  it('parses the usual forms and refuses the rest', () => {
    expect([parseDuration('500ms'), parseDuration('30s'), parseDuration('5m'), parseDuration('1h30m'), parseDuration('2'), parseDuration('1.5s'), parseDuration('1d')]).toEqual([500, 30_000, 300_000, 5_400_000, 2000, 1500, 86_400_000]);
    for (const bad of ['', 'soon', '-1s', '1x', '5 m', 'm5']) expect(() => parseDuration(bad, '--interval')).toThrow(UsageError);
    expect([formatDuration(250), formatDuration(90_000), formatDuration(7_200_000), formatDuration(3_661_000)]).toEqual(['250ms', '1m30s', '2h', '1h1m1s']);
  });
});

describe('controller options from the command line', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-opts-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));
  const deps = (env: NodeJS.ProcessEnv = {}) => ({ env, stateDir: path.join(dir, 'state'), cwd: dir });

  it('builds a directory source with defaults', async () => {
    const o = await buildControllerOptions({ filename: ['m'] }, deps());
    expect(o).toEqual({ sources: [{ name: 'default', kind: 'directory', paths: [path.join(dir, 'm')], prune: false, selfHeal: true }], resyncMs: 600_000, leaseMs: 15_000, concurrency: 4, http: { host: '127.0.0.1', port: DEFAULT_HTTP_PORT } });
  });

  it('builds a git source with its cache under the state dir and a webhook secret from a file', async () => {
    writeFileSync(path.join(dir, 'secret'), 's3cret\n');
    const o = await buildControllerOptions({ git: 'https://git.example/ops.git', branch: 'prod', path: 'deploy', interval: '30s', sourceName: 'ops', prune: true, selfHeal: false, webhookSecretFile: 'secret', httpPort: '0' }, deps());
    expect(o.sources[0]).toEqual({ name: 'ops', kind: 'git', paths: [], prune: true, selfHeal: false, git: { url: 'https://git.example/ops.git', branch: 'prod', path: 'deploy', cacheDir: path.join(dir, 'state', 'git', 'ops'), intervalMs: 30_000 } });
    expect(o.webhookSecret).toBe('s3cret');
    expect(o.http).toEqual({ host: '127.0.0.1', port: 0 });
    expect((await buildControllerOptions({ http: false }, deps({ NS8CTL_WEBHOOK_SECRET: 'env' }))).webhookSecret).toBe('env');
    expect((await buildControllerOptions({ http: false }, deps())).http).toBeUndefined();
  });

  it('builds several named sources in one controller, each with its own settings and cache clone', async () => {
    const o = await buildControllerOptions(
      {
        filename: ['base'],
        source: ['apps=apps', 'apps=more,prune', 'lab=lab,no-self-heal'],
        git: ['prod=https://git.example/ops.git,branch=release,path=deploy,interval=30s,prune', 'edge=ssh://git@git.example/edge.git'],
        branch: 'main',
        interval: '2m',
      },
      deps(),
    );
    expect(o.sources).toEqual([
      { name: 'default', kind: 'directory', paths: [path.join(dir, 'base')], prune: false, selfHeal: true },
      { name: 'apps', kind: 'directory', paths: [path.join(dir, 'apps'), path.join(dir, 'more')], prune: true, selfHeal: true },
      { name: 'lab', kind: 'directory', paths: [path.join(dir, 'lab')], prune: false, selfHeal: false },
      { name: 'prod', kind: 'git', paths: [], prune: true, selfHeal: true, git: { url: 'https://git.example/ops.git', branch: 'release', path: 'deploy', cacheDir: path.join(dir, 'state', 'git', 'prod'), intervalMs: 30_000 } },
      { name: 'edge', kind: 'git', paths: [], prune: false, selfHeal: true, git: { url: 'ssh://git@git.example/edge.git', branch: 'main', path: '.', cacheDir: path.join(dir, 'state', 'git', 'edge'), intervalMs: 120_000 } },
    ]);
    // An unnamed --git is the --source-name source, next to named ones; commas that are not settings stay in the URL.
    const mixed = await buildControllerOptions({ git: ['https://git.example/a,b.git', 'lab=/srv/lab.git,interval=5s'], sourceName: 'main', http: false }, deps());
    expect(mixed.sources.map((s) => [s.name, s.git?.url, s.git?.intervalMs])).toEqual([
      ['main', 'https://git.example/a,b.git', 60_000],
      ['lab', '/srv/lab.git', 5_000],
    ]);
  });

  it('takes trusted signing keys for git sources: --trusted-keys for all, trusted-keys= per source', async () => {
    writeFileSync(path.join(dir, 'ops.asc'), 'key');
    mkdirSync(path.join(dir, 'keys'));
    const o = await buildControllerOptions({ git: ['prod=https://git.example/p.git', 'lab=https://git.example/l.git,trusted-keys=keys'], trustedKeys: 'ops.asc', http: false }, deps());
    expect(o.sources.map((s) => [s.name, s.git?.trustedKeys])).toEqual([
      ['prod', path.join(dir, 'ops.asc')],
      ['lab', path.join(dir, 'keys')],
    ]);
    expect((await buildControllerOptions({ git: 'https://git.example/p.git', http: false }, deps())).sources[0]!.git).not.toHaveProperty('trustedKeys');
    await expect(buildControllerOptions({ git: 'https://git.example/p.git', trustedKeys: 'missing.asc' }, deps())).rejects.toThrow(/--trusted-keys "missing.asc": no such file or directory/);
    await expect(buildControllerOptions({ git: ['a=https://git.example/p.git,trusted-keys=nope'] }, deps())).rejects.toThrow(/--git a=\.\.\.,trusted-keys= "nope": no such file/);
    await expect(buildControllerOptions({ filename: ['m'], trustedKeys: 'ops.asc' }, deps())).rejects.toThrow(/--trusted-keys need --git/);
  });

  it('takes a notification webhook from --notify-url or $NS8CTL_NOTIFY_URL, and refuses what is not one', async () => {
    expect((await buildControllerOptions({ filename: ['m'], notifyUrl: 'https://chat.example/hooks/x', notifyQuiet: '10m', http: false }, deps())).notify).toEqual({ url: 'https://chat.example/hooks/x', quietMs: 600_000 });
    expect((await buildControllerOptions({ filename: ['m'], http: false }, deps({ NS8CTL_NOTIFY_URL: 'http://127.0.0.1:9/n' }))).notify).toEqual({ url: 'http://127.0.0.1:9/n', quietMs: 3_600_000 });
    expect((await buildControllerOptions({ filename: ['m'], http: false }, deps())).notify).toBeUndefined();
    expect((await buildControllerOptions({ filename: ['m'], auditLog: 'log/audit.jsonl', http: false }, deps())).auditLog).toBe(path.join(dir, 'log', 'audit.jsonl'));
    await expect(buildControllerOptions({ filename: ['m'], notifyUrl: 'chat' }, deps())).rejects.toThrow(/--notify-url chat is not a URL/);
    await expect(buildControllerOptions({ filename: ['m'], notifyUrl: 'ftp://x/y' }, deps())).rejects.toThrow(/only http:\/\/ and https:\/\//);
    await expect(buildControllerOptions({ filename: ['m'], notifyQuiet: '1h' }, deps())).rejects.toThrow(/--notify-quiet needs --notify-url/);
  });

  it('gives every source the --sync-window windows, and refuses a bad one', async () => {
    const o = await buildControllerOptions({ filename: ['m'], git: ['lab=https://git.example/l.git'], syncWindow: ['Sat,Sun 01:00-06:00', '02:00-03:00'], http: false }, deps());
    expect(o.sources.map((s) => s.syncWindows?.map((w) => w.text))).toEqual([
      ['Sat,Sun 01:00-06:00', '02:00-03:00'],
      ['Sat,Sun 01:00-06:00', '02:00-03:00'],
    ]);
    expect((await buildControllerOptions({ filename: ['m'], http: false }, deps())).sources[0]).not.toHaveProperty('syncWindows');
    await expect(buildControllerOptions({ filename: ['m'], syncWindow: ['Sat 1-2'] }, deps())).rejects.toThrow(/--sync-window "Sat 1-2": "1" is not a time HH:MM/);
  });

  it('refuses source combinations that would be ambiguous, with usage errors naming the way out', async () => {
    const bad: [Parameters<typeof buildControllerOptions>[0], RegExp][] = [
      [{ filename: ['m'], git: 'https://x/r.git' }, /name them: --source NAME=PATH and --git NAME=URL/],
      [{ git: ['https://x/a.git', 'https://x/b.git'] }, /name each source/],
      [{ source: ['a=x'], git: ['a=https://x/r.git'] }, /source "a" is given twice/],
      [{ filename: ['m'], source: ['default=x'] }, /source "default" is given twice/],
      [{ git: ['a=https://x/a.git', 'b=https://x/b.git'], cacheDir: 'c' }, /--cache-dir is for a single git source/],
      [{ git: ['a=https://x/a.git,cache-dir=c', 'b=https://x/b.git,cache-dir=c'] }, /share the cache clone/],
      [{ source: ['a=x,branch=main'] }, /branch= is a git setting/],
      [{ git: ['a=https://x/a.git,brnach=main'] }, /unknown setting "brnach"/],
      [{ source: ['a=x,prune', 'a=y,no-prune'] }, /contradictory settings/],
      [{ source: ['-bad=x'] }, /expected NAME=PATH/],
      [{ source: ['a=-'] }, /stdin/],
      [{ git: ['a=https://x/a.git,interval=10ms'] }, /interval=: the git poll interval of source a/],
      [{ source: ['a=x'], branch: 'main' }, /need --git/],
    ];
    for (const [b, msg] of bad) await expect(buildControllerOptions(b, deps())).rejects.toThrow(msg);
  });

  it('refuses contradictory or invalid options with usage errors', async () => {
    writeFileSync(path.join(dir, 'empty'), '\n');
    const bad = [
      { filename: ['m'], git: 'x' },
      { branch: 'main' },
      { filename: ['-'] },
      { git: 'x', branch: 'a..b' },
      { git: 'x', path: '../etc' },
      { git: 'x', path: '/etc' },
      { git: 'x', interval: '10ms' },
      { sourceName: 'a/b' },
      { httpPort: 'abc' },
      { lease: '100ms' },
      { concurrency: '0' },
      { webhookSecretFile: 'missing' },
      { webhookSecretFile: 'empty' },
    ];
    for (const b of bad) await expect(buildControllerOptions(b, deps())).rejects.toThrow(UsageError);
  });
});

describe('source helpers', () => {
  const module = (name: string, tag: string): DesiredObject<ModuleObject> => ({
    object: { apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name }, spec: { image: `r/webapp:${tag}`, node: 1 } },
    source: { file: `${name}.yaml`, doc: 0, line: 1, col: 1 },
  });

  it('digests content, not order or source positions', () => {
    const a = [module('a1', '1'), module('b1', '1')];
    const b = [{ ...module('b1', '1'), source: { file: 'x', doc: 3, line: 9, col: 9 } }, module('a1', '1')];
    expect(desiredDigest(a)).toBe(desiredDigest(b));
    expect(desiredDigest(a)).not.toBe(desiredDigest([module('a1', '2'), module('b1', '1')]));
  });

  it('pins suspended modules to what is stored: no change, no creation, no prune', () => {
    const state = emptyState();
    const stored = module('a1', 'old');
    state.objects.set('Module/a1', { key: 'Module/a1', object: stored.object, generation: 1, source: 'a1.yaml', revision: '', applySet: 'default', finalizers: [] });
    state.objects.set('Module/c1', { key: 'Module/c1', object: module('c1', 'old').object, generation: 1, source: 'c1.yaml', revision: '', applySet: 'default', finalizers: [] });
    state.inventory.set('default', new Set(['Module/a1', 'Module/c1']));
    const desired = [module('a1', 'new'), module('b1', 'new'), module('d1', 'new')];
    const pinned = pinSuspended(desired, state, 'default', new Set(['a1', 'b1', 'c1']));
    expect(pinned.map((d) => `${d.object.metadata.name}:${(d.object as ModuleObject).spec.image}`)).toEqual(['a1:r/webapp:old', 'd1:r/webapp:new', 'c1:r/webapp:old']);
    expect(pinSuspended(desired, state, 'default', new Set())).toEqual(desired);
  });

  it('ignores editor temp files and non-manifest files in watched directories', () => {
    expect(ignoredName('/m/.wiki.yaml.swp', true)).toBe(true);
    expect(ignoredName('/m/wiki.yaml~', true)).toBe(true);
    expect(ignoredName('/m/.wiki.yaml.tmp123', true)).toBe(true);
    expect(ignoredName('/m/README.md', true)).toBe(true);
    expect(ignoredName('/m/wiki.yaml', true)).toBe(false);
    expect(ignoredName('/m/wiki.YML', true)).toBe(false);
    expect(ignoredName('/m/apps', false)).toBe(false);
    expect(ignoredName('/m/prod.v2', false)).toBe(false);
    expect(ignoredName('/m/.git', false)).toBe(true);
  });
});
