/**
 * Events reach their handlers: events/<name>/ step directories, eventsgw.conf [actions] (a task
 * on the agent's own queue) and [commands] (a shell command), with real PUBLISH on real Redis.
 */
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { runAgent, type AgentHandle } from '../../src/agent/agent.js';
import { runEventHandlers, type EventHandlersHandle } from '../../src/agent/events.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { until } from '../support/wait-for.js';

let server: TestRedis;
let admin: Redis;
let root: string;
let state: string;
let agent: AgentHandle;
let events: EventHandlersHandle;
let log: string[];

function step(dir: string, name: string, body: string): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, name), `#!/bin/sh\n${body}\n`);
  chmodSync(path.join(dir, name), 0o755);
}

/**
 * Waits for `file` to exist and returns its content. Every writer in these tests renames a
 * complete temporary file into place, so existence means complete content.
 */
async function waitForFile(file: string): Promise<string> {
  await until(`${file} written`, () => existsSync(file), { timeoutMs: 10_000 });
  return readFileSync(file, 'utf8');
}

/** Publishes and checks that at least one subscriber (ours: start() awaited its SUBSCRIBE) received it. */
async function publish(channel: string, payload: unknown): Promise<void> {
  expect(await admin.publish(channel, JSON.stringify(payload))).toBeGreaterThan(0);
}

beforeAll(async () => {
  server = await startRedis();
  admin = server.client();
});
afterAll(async () => server.stop());

beforeEach(async () => {
  await admin.flushall();
  log = [];
  root = mkdtempSync(path.join(tmpdir(), 'agent-ev-'));
  state = path.join(root, 'state');
  mkdirSync(state);
  writeFileSync(path.join(state, 'environment'), 'MODULE_ID=web1\n');
  const redis = server.client();
  agent = runAgent({ agentId: 'module/web1', installDir: root, stateDir: state, actionsDirs: [path.join(root, 'actions')], pollSeconds: 1, log: (l) => log.push(l) }, { redis, runner: new ProcessRunner() });
  events = runEventHandlers({ agentId: 'module/web1', installDir: root, stateDir: state, eventsDirs: [path.join(root, 'events')], log: (l) => log.push(l), drainMs: 200 }, { subscriber: server.client(), redis, runner: new ProcessRunner() });
});
afterEach(async () => {
  await events.stop();
  await agent.stop();
  rmSync(root, { recursive: true, force: true });
});

describe('event handlers', () => {
  it('run events/<name>/ steps in order with the payload and the event variables, stopping at the first failure', async () => {
    const out = path.join(root, 'out');
    const dir = path.join(root, 'events', 'certificate-updated');
    step(dir, '10first', `printf '%s %s %s ' "$AGENT_EVENT_NAME" "$AGENT_EVENT_SOURCE" "$MODULE_ID" >> ${out}; cat >> ${out}`);
    step(dir, '20fail', `printf ' failed' >> ${out}; exit 5`);
    step(dir, '30never', `printf ' NEVER' >> ${out}`);
    step(dir, '40done', `touch ${out}.never`);
    await events.start();
    await publish('module/traefik1/event/certificate-updated', { domain: 'example.org' });
    await until('the handler ran', () => log.some((l) => l.includes('later steps not run')), { timeoutMs: 10_000 });
    expect(await waitForFile(out)).toBe('certificate-updated module/traefik1 web1 {"domain":"example.org"} failed');
    expect(existsSync(`${out}.never`)).toBe(false);
    expect(log.join('\n')).toMatch(/step 20fail exited 5; later steps not run/);
    expect(log.join('\n')).not.toContain('example.org');
  });

  it('turn an [actions] entry with a glob pattern into a task on the agent own queue, payload as data', async () => {
    const out = path.join(root, 'renewed');
    step(path.join(root, 'actions', 'renew-certificate'), '10renew', `cat > ${out}.tmp && mv ${out}.tmp ${out}`);
    writeFileSync(path.join(state, 'eventsgw.conf'), '[actions]\n# as in the seeds\nmodule/traefik*/event/certificate-renew = renew-certificate\n');
    await agent.start();
    await events.start();
    expect(events.subscriptions()).toEqual({ channels: [], patterns: ['*/event/*', 'module/traefik*/event/certificate-renew'] });
    await publish('module/traefik2/event/certificate-renew', { name: 'web' });
    await events.idle();
    expect(JSON.parse(await waitForFile(out))).toEqual({ name: 'web' });
  });

  it('run a [commands] entry as a shell command with the payload on stdin, and pick up config changes on reload', async () => {
    const out = path.join(root, 'acl');
    writeFileSync(path.join(state, 'eventsgw.conf'), `[commands]\ncluster/event/acl-changed = { cat; printf " %s" "$AGENT_EVENT_NAME"; } > ${out}.tmp && mv ${out}.tmp ${out}\n`);
    await events.start();
    expect(events.subscriptions().channels).toEqual(['cluster/event/acl-changed']);
    await publish('cluster/event/acl-changed', 'cluster/acls');
    await events.idle();
    expect(await waitForFile(out)).toBe('"cluster/acls" acl-changed');

    writeFileSync(path.join(state, 'eventsgw.conf'), `[commands]\nmodule/*/event/other = touch ${out}.other\n`);
    await events.reload();
    expect(events.subscriptions()).toEqual({ channels: [], patterns: ['*/event/*', 'module/*/event/other'] });
    rmSync(out);
    await publish('cluster/event/acl-changed', 'x'); // still heard through */event/*, but no longer a command
    await publish('module/a1/event/other', {});
    await events.idle();
    await waitForFile(`${out}.other`);
    expect(existsSync(`${out}.other`)).toBe(true);
    expect(existsSync(out)).toBe(false);
  });

  it('report a broken eventsgw.conf line by line and still run the valid entries', async () => {
    const out = path.join(root, 'ok');
    writeFileSync(path.join(state, 'eventsgw.conf'), `[actions]\nx/event/y = ../../bin/sh\n[commands]\nx/event/z = touch ${out}\n`);
    await events.start();
    expect(log.join('\n')).toMatch(/eventsgw.conf:2: \[actions\] x\/event\/y: "..\/..\/bin\/sh" is not a valid action name/);
    await publish('x/event/z', {});
    await events.idle();
    await waitForFile(out);
    expect(existsSync(out)).toBe(true);
  });
});
