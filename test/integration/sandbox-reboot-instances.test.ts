/**
 * A sandbox node rebooted under a running instance, end to end: the demo (as a library) brings
 * up a one-node sandbox, the example images, the manifests and the continuous loop (`ns8ctl run
 * -f /etc/ns8ctl/manifests --node 1` as the unit ns8ctl-demo in node 1) and waits for webapp1
 * Ready; then `ns8ctl sandbox stop 1` and `ns8ctl sandbox start 1` (a clean systemd shutdown and
 * boot of the node, Redis included); the boot starts the loop again (its unit is enabled).
 * Afterwards desired state is still there and the instance was never removed: no removal in the
 * loop's journal, the same Unix user (uid, home inode), its unit active and reconciled by the
 * agent, the same HTTP port answering, and no `module-orphaned` / `desired-state-suspect` Warning.
 * Real podman, systemd, redis-server and useradd inside the node; the built CLI runs in the node
 * (`npm run build` first); shares the cached node root filesystem of the other sandbox tests.
 */
import { runDemo, type DemoResult } from '../../src/demo/demo.js';
import { LOOP_UNIT } from '../../src/demo/plan.js';
import { sandboxEnv } from '../../src/sandbox/env.js';
import { runCli } from '../support/cli.js';
import { useDemoSandbox } from '../support/demo-sandbox.js';
import { eventually, sandboxNode } from '../support/sandbox-node.js';

const NAME = 'reboot';
const ID = 'webapp1';
let out = '';
const { deps } = useDemoSandbox(NAME, 'ns8ctl-reboot-test-', (t) => void (out += t));
const { inNode } = sandboxNode(NAME);
const userctl = (...args: string[]) => inNode(['systemctl', '--user', '-M', `${ID}@`, ...args]);

/** What must not change across the reboot: the instance's Unix user and where it answers. */
interface Identity {
  passwd: string;
  homeInode: string;
  port: string;
}

let first: DemoResult;
let before: Identity;
/** The oldest event before the reboot: a Redis that lost its data cannot have it again. */
let oldestEvent: unknown;
let redisEnv: NodeJS.ProcessEnv;

/** The user's passwd line (name, uid, gid, home, shell) and its home directory's inode, in node 1. */
async function userIdentity(): Promise<Omit<Identity, 'port'>> {
  const passwd = (await inNode(['getent', 'passwd', ID])).out.trim();
  const home = passwd.split(':')[5] ?? '';
  const homeInode = home ? (await inNode(['stat', '-c', '%i', home])).out.trim() : '';
  return { passwd, homeInode };
}

/** The loop's journal in node 1 (the node's journal is volatile: this boot only, all of the restarted loop). */
async function loopJournal(): Promise<string> {
  return (await inNode(['journalctl', '-u', LOOP_UNIT, '--no-pager', '-o', 'cat'])).out;
}

async function cliJson<T>(args: string[]): Promise<T> {
  const r = await runCli([...args, '-o', 'json'], redisEnv);
  if (r.code !== 0) throw new Error(`ns8ctl ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

const eventList = async (): Promise<{ name: string; type: string; object: string }[]> => (await cliJson<{ items: { name: string; type: string; object: string }[] }>(['events', '--limit', '1000'])).items;

const desiredNames = async (kind: 'modules' | 'nodes'): Promise<string[]> =>
  (await cliJson<{ items: { metadata: { name: string } }[] }>(['get', kind])).items.map((i) => i.metadata.name).sort();

describe('a sandbox node rebooted under a Ready instance', () => {
  test('the continuous loop in node 1 brings webapp1 to Ready, answering HTTP', async () => {
    first = await runDemo({ name: NAME }, deps);
    expect(first.http).toEqual([{ id: ID, port: expect.stringMatching(/^\d+$/), body: expect.stringContaining('webapp-httpd 1.0.0') }]);
    redisEnv = { NS8CTL_REDIS_URL: (await sandboxEnv({ name: NAME }, deps)).redisUrl };
    before = { ...(await userIdentity()), port: first.http[0]!.port };
    expect(before.passwd).toMatch(new RegExp(`^${ID}:x:\\d+:\\d+:.*:/home/${ID}:`));
    expect(before.homeInode).toMatch(/^\d+$/);
    oldestEvent = (await eventList())[0];
    expect(oldestEvent).toBeDefined();
  }, 900_000 /* a cold node root filesystem takes 5-6 minutes under load */);

  test('after `sandbox stop 1` and `sandbox start 1` desired state, the user and the loop (an enabled unit) are back', async () => {
    const stop = await runCli(['sandbox', 'stop', '--name', NAME, '1']);
    expect(stop).toMatchObject({ code: 0, stdout: expect.stringContaining('stopped') });
    const start = await runCli(['sandbox', 'start', '--name', NAME, '1']);
    expect(start).toMatchObject({ code: 0, stdout: expect.stringContaining('running') });
    // The boot starts the loop by itself (it is enabled), as a real node starts its services.
    await eventually('the loop active again after the boot', async () => ((await inNode(['systemctl', 'is-active', LOOP_UNIT])).out.trim() === 'active' ? true : undefined), { timeoutMs: 60_000 });
    expect(await desiredNames('modules')).toEqual([ID]);
    expect(await desiredNames('nodes')).toEqual(['node1']);
    // Kept, not re-made: the loop applying the manifests again cannot bring an old event back.
    expect((await eventList())[0]).toEqual(oldestEvent);
    expect(await userIdentity()).toEqual({ passwd: before.passwd, homeInode: before.homeInode });
  }, 300_000);

  test('the loop after the boot keeps the same instance: never removed, same user, unit reconciled, same port answering, no orphan or suspect warning', async () => {
    out = '';
    // The demo run again waits for Ready and reads the port: it finds everything in place.
    const again = await runDemo({ name: NAME }, deps);
    expect(again.changes).toEqual([]);
    expect(again.http).toEqual([{ id: ID, port: before.port, body: expect.stringContaining('webapp-httpd 1.0.0') }]);
    // Proof that the agent of the loop started at boot has reconciled webapp1 (and not just that
    // the status Redis kept says Ready): a unit stopped behind its back is started again.
    expect((await userctl('is-active', 'webapp.service')).out.trim()).toBe('active');
    const invocation = (await userctl('show', '-p', 'InvocationID', 'webapp.service')).out.trim();
    expect((await userctl('stop', 'webapp.service')).code).toBe(0);
    await eventually(
      'webapp.service started again by the node agent of the loop started at boot',
      async () => {
        const now = (await userctl('show', '-p', 'InvocationID', 'webapp.service')).out.trim();
        return now !== invocation && (await userctl('is-active', 'webapp.service')).out.trim() === 'active' ? now : undefined;
      },
      { timeoutMs: 120_000, everyMs: 1000, explain: async () => (await loopJournal()).split('\n').slice(-30).join('\n') },
    );
    const journal = await loopJournal();
    expect(journal).toContain(`node-agent: ${ID}: drift: units stopped: webapp.service`);
    expect(journal).not.toMatch(/: removed \(|: removing\b|Orphaned|DesiredStateSuspect/);
    expect(await desiredNames('modules')).toEqual([ID]);
    expect({ ...(await userIdentity()), port: before.port }).toEqual(before);
    expect((await inNode(['curl', '-sS', '--max-time', '5', `http://127.0.0.1:${before.port}/`])).out).toContain('webapp-httpd 1.0.0');
    const events = await eventList();
    expect(events.map((e) => e.name)).toContain('module-became-ready');
    expect(events.filter((e) => ['module-orphaned', 'desired-state-suspect', 'module-removing', 'module-removed'].includes(e.name))).toEqual([]);
  }, 300_000);
});
