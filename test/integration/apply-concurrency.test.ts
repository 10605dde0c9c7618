import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { applyPlan, preparePlan } from '../../src/apply/pipeline.js';
import { ConflictError } from '../../src/errors.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { executeWrites } from '../../src/state/write-state.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';

const manifest = (title: string): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Node
metadata: { name: node1 }
spec: { id: 1 }
---
apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata: { name: webapp1 }
spec:
  image: 127.0.0.1:5000/ns8ctl-fixtures/webapp:1.0.0
  node: 1
  configuration: { title: "${title}" }
`;

describe('concurrent applies', () => {
  let srv: TestRedis;
  let dir: string;
  beforeAll(async () => {
    srv = await startRedis();
    dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-conc-'));
  });
  afterAll(async () => {
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('never interleave or lose an update: every spec change counts once in the generation', async () => {
    const runner = new ProcessRunner();
    // No image-label or schema lookups: this test is about the write path, and podman under load is slow.
    const opts = { applySet: 'default', prune: false, imageLabels: false as const, configuration: false as const };
    writeFileSync(path.join(dir, 'base.yaml'), manifest('v0'));
    const first = srv.client();
    await applyPlan(await preparePlan([path.join(dir, 'base.yaml')], first, opts), first, { ...opts, forcePrune: false, runner });

    const N = 12;
    for (let i = 1; i <= N; i++) writeFileSync(path.join(dir, `v${i}.yaml`), manifest(`v${i}`));
    // Each applier has its own connection; all read the same generation-1 state before any writes.
    const clients = Array.from({ length: N }, () => srv.client());
    const prepared = await Promise.all(clients.map((c, i) => preparePlan([path.join(dir, `v${i + 1}.yaml`)], c, opts)));
    const results = await Promise.all(prepared.map((p, i) => applyPlan(p, clients[i]!, { ...opts, forcePrune: false, runner, maxAttempts: 50 })));

    const h = await first.hgetall('ns8ctl/desired/module/webapp1');
    expect(Number(h.generation)).toBe(1 + N);
    // All but the first writer planned on stale state, hit the precondition and re-planned.
    expect(results.filter((r) => r.attempts > 1).length).toBeGreaterThanOrEqual(N - 1);
    const last = JSON.parse(h.object!).spec.configuration.title as string;
    expect(prepared.map((_, i) => `v${i + 1}`)).toContain(last);
  });

  it('a write planned on stale state is refused whole: nothing of it is written', async () => {
    const r = srv.client();
    await r.hset('ns8ctl/desired/module/x1', 'object', '{"changed":"by someone else"}');
    const attempt = executeWrites(r, [
      { op: 'hset', key: 'untouched', field: 'a', value: '1' },
      { op: 'expect', key: 'ns8ctl/desired/module/x1', object: '', label: 'Module/x1' },
    ]);
    await expect(attempt).rejects.toBeInstanceOf(ConflictError);
    await expect(attempt).rejects.toThrow('Module/x1 was created by another writer');
    expect(await r.exists('untouched')).toBe(0);
  });
});
