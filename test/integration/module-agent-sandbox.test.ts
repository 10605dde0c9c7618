/**
 * Issue 7 end to end in a sandbox node (real systemd, rootless podman, the module agent as NS8's
 * agent.service): `ns8ctl run` (controller + node agent) applies a Module whose manifest carries a
 * configuration; the example module's configure-module runs through its agent and its
 * get-configuration returns the same; a changed manifest is configured again; an event published
 * on Redis runs the instance's `events/<name>/` handler. Uses the built CLI inside the node.
 */
import { Redis } from 'ioredis';
import { createSandbox, type SandboxInfo } from '../../src/sandbox/create.js';
import { deleteSandbox } from '../../src/sandbox/delete.js';
import { adminRedisUrl } from '../../src/sandbox/node-config.js';
import { readAdminPassword } from '../../src/sandbox/record.js';
import { keys } from '../../src/state/keys.js';
import { ensureExampleImages, type ExampleImages } from '../support/example-images.js';
import { eventually, sandboxNode } from '../support/sandbox-node.js';

const NAME = 'magent';
const ID = 'webapp1';
const { deps, inNode } = sandboxNode(NAME);
let info: SandboxInfo;
let images: ExampleImages;
let leader: Redis;

const journal = async (): Promise<string> => (await inNode(['journalctl', '-u', 'ns8ctl-run', '--no-pager', '-n', '60'])).out;

async function writeManifest(greeting: string): Promise<void> {
  const manifest = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${ID}\nspec:\n  image: ${images.webapp['1.1.0']}\n  node: 1\n  removalPolicy: Delete\n  configuration:\n    greeting: "${greeting}"\n`;
  // Atomic save, as an editor does: the controller's watcher must see one complete file.
  const w = await inNode(['sh', '-c', `mkdir -p /root/manifests && cat > /root/manifests/.${ID}.tmp && mv /root/manifests/.${ID}.tmp /root/manifests/${ID}.yaml`], manifest);
  expect(w.code).toBe(0);
}

async function configuration(): Promise<{ greeting?: string } | undefined> {
  const r = await inNode(['timeout', '30', 'ns8ctl', 'run-action', ID, 'get-configuration']);
  return r.code === 0 ? (JSON.parse(r.out) as { greeting?: string }) : undefined;
}

beforeAll(async () => {
  await deleteSandbox({ name: NAME }, deps);
  info = await createSandbox({ name: NAME, nodes: 1 }, deps);
  images = await ensureExampleImages(info.registry);
  leader = new Redis(adminRedisUrl(info.addresses['1'] ?? '', await readAdminPassword(deps, NAME)), { maxRetriesPerRequest: 1 });
}, 900_000);

afterAll(async () => {
  leader?.disconnect();
  if (!process.env.NS8CTL_KEEP_SANDBOX) await deleteSandbox({ name: NAME }, deps).catch(() => undefined);
}, 120_000);

describe('the module agent and declarative configuration in a sandbox node', () => {
  test('ns8ctl run configures the instance from its manifest; get-configuration returns the same', async () => {
    await writeManifest('Hello from the manifest');
    const started = await inNode(['systemd-run', '--unit=ns8ctl-run', '--collect', '/usr/local/bin/ns8ctl', 'run', '-f', '/root/manifests', '--node', '1', '--no-http', '--agent-resync', '5s', '--resync', '10s']);
    expect(started.code).toBe(0);
    const got = await eventually('configure-module applied', async () => {
      const c = await configuration();
      return c?.greeting === 'Hello from the manifest' ? c : undefined;
    }, { timeoutMs: 180_000, everyMs: 1000, explain: journal });
    expect(got).toEqual({ greeting: 'Hello from the manifest' });
    // The configured value is what the instance's container serves.
    const port = (await leader.hgetall(keys.moduleEnvironment(ID))).TCP_PORT ?? '';
    const served = await eventually('greeting served', async () => {
      const r = await inNode(['curl', '-sf', '--max-time', '3', `http://127.0.0.1:${port}/public/greeting.txt`]);
      return r.code === 0 ? r.out : undefined;
    }, { timeoutMs: 180_000, everyMs: 1000, explain: journal });
    expect(served.trim()).toBe('Hello from the manifest');
  }, 600_000);

  test('a changed configuration in the manifest runs configure-module again', async () => {
    await writeManifest('Changed in git');
    const got = await eventually('configure-module applied again', async () => {
      const c = await configuration();
      return c?.greeting === 'Changed in git' ? c : undefined;
    }, { timeoutMs: 180_000, everyMs: 1000, explain: journal });
    expect(got).toEqual({ greeting: 'Changed in git' });
  }, 300_000);

  test('a published event runs the instance events/<name>/ handler with the payload', async () => {
    const dir = `/home/${ID}/.config/events/greeting-requested`;
    const script = '#!/bin/sh\ncat > "$AGENT_STATE_DIR/event-received.json"\necho "$AGENT_EVENT_SOURCE" > "$AGENT_STATE_DIR/event-source.txt"\n';
    expect((await inNode(['sh', '-c', `mkdir -p ${dir} && cat > ${dir}/10record && chmod 755 ${dir}/10record && chown -R ${ID}: /home/${ID}/.config/events`], script)).code).toBe(0);
    const payload = await eventually('event handler ran', async () => {
      await inNode(['ns8ctl', 'publish', `module/${ID}/event/greeting-requested`, '{"who":"sandbox test"}']);
      const r = await inNode(['cat', `/home/${ID}/.config/state/event-received.json`]);
      return r.code === 0 && r.out.trim() ? r.out : undefined;
    }, { timeoutMs: 120_000, everyMs: 1000, explain: journal });
    expect(JSON.parse(payload)).toEqual({ who: 'sandbox test' });
    expect((await inNode(['cat', `/home/${ID}/.config/state/event-source.txt`])).out.trim()).toBe(`module/${ID}`);
    await inNode(['systemctl', 'stop', 'ns8ctl-run']);
  }, 180_000);
});
