import { Redis } from 'ioredis';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { allocatePorts, claimPorts, freePorts, portsInEnvironment, readNodePorts, rangeSize, reserveForeignPorts, type PortRange } from '../../src/node-agent/ports.js';
import { applyModuleAcl, deleteModuleAcl, listAclUsers, aclLineMatches, CLUSTER_ACLS_KEY } from '../../src/node-agent/redis-acl.js';
import { RedisDesiredSource } from '../../src/node-agent/desired-source.js';
import { claimDefaultInstance, releaseDefaultInstance } from '../../src/node-agent/default-instance.js';
import { keys } from '../../src/state/keys.js';

let redis: TestRedis;
let a: Redis;
let b: Redis;

beforeAll(async () => {
  redis = await startRedis();
  a = redis.client();
  b = redis.client();
});
afterAll(async () => {
  await redis.stop();
});
beforeEach(async () => {
  await a.flushall();
});

function overlaps(x: PortRange, y: PortRange): boolean {
  return x.start <= y.end && y.start <= x.end;
}

describe('the port allocator (Redis Lua, per node)', () => {
  test('an instance NS8 made keeps the ports of its environment; instances NS8 runs alone are never handed out twice', async () => {
    // NS8 made dokuwiki1 (20005-20006) and mail1 (20000) on node 1, and nc1 on node 2.
    await a.hset(keys.moduleNode(), { dokuwiki1: '1', mail1: '1', nc1: '2' });
    await a.hset(keys.moduleEnvironment('dokuwiki1'), { TCP_PORT: '20005', TCP_PORTS_RANGE: '20005-20006', TCP_PORTS: '20005,20006' });
    await a.hset(keys.moduleEnvironment('mail1'), { TCP_PORT: '20000', TCP_PORTS: '20000', UDP_PORT: '20000', UDP_PORTS: '20000' });
    await a.hset(keys.moduleEnvironment('nc1'), { TCP_PORT: '20000' });
    // ns8ctl adopts dokuwiki1 and adds webapp1 (demand 5): mail1's port is reserved, dokuwiki1 keeps its range.
    expect(await reserveForeignPorts(a, 1, 'dokuwiki1')).toEqual({ reserved: ['mail1/tcp=20000-20000', 'mail1/udp=20000-20000'], dropped: [] });
    const env = await a.hgetall(keys.moduleEnvironment('dokuwiki1'));
    expect(await allocatePorts(a, 1, 'dokuwiki1', 'tcp', 2, undefined, portsInEnvironment(env, 'tcp'))).toEqual({ start: 20005, end: 20006 });
    await claimPorts(a, 1, 'dokuwiki1');
    await a.hset(keys.moduleNode(), 'webapp1', '1');
    await reserveForeignPorts(a, 1, 'webapp1');
    expect(await allocatePorts(a, 1, 'webapp1', 'tcp', 5)).toEqual({ start: 20007, end: 20011 });
    expect(await a.smembers(keys.nodeForeignPorts(1))).toEqual(['mail1']);
    // A preferred range that is taken is not used: first fit instead.
    expect(await allocatePorts(a, 1, 'x1', 'tcp', 1, undefined, { start: 20005, end: 20005 })).toEqual({ start: 20001, end: 20001 });
    // NS8 removes mail1: its reservation goes at the next allocation; adopted dokuwiki1 stays.
    await a.hdel(keys.moduleNode(), 'mail1');
    expect(await reserveForeignPorts(a, 1, 'y1')).toEqual({ reserved: [], dropped: ['mail1'] });
    const table = await a.hgetall(keys.nodePorts(1));
    expect(Object.keys(table).sort()).toEqual(['dokuwiki1/tcp', 'webapp1/tcp', 'x1/tcp']);
    expect(await a.exists(keys.nodeForeignPorts(1))).toBe(0);
    expect(await a.hgetall(keys.nodePorts(2))).toEqual({});
  });

  test('the ports an environment names', () => {
    expect(portsInEnvironment({ TCP_PORT: '20005', TCP_PORTS_RANGE: '20005-20010' }, 'tcp')).toEqual({ start: 20005, end: 20010 });
    expect(portsInEnvironment({ TCP_PORT: '20005', TCP_PORTS: '20005,20006,20007' }, 'tcp')).toEqual({ start: 20005, end: 20007 });
    expect(portsInEnvironment({ TCP_PORT: '20005', TCP_PORTS: '20005,20009' }, 'tcp')).toEqual({ start: 20005, end: 20005 });
    expect(portsInEnvironment({ UDP_PORT: '30000' }, 'udp')).toEqual({ start: 30000, end: 30000 });
    expect(portsInEnvironment({ TCP_PORT: 'x' }, 'tcp')).toBeUndefined();
    expect(portsInEnvironment({}, 'udp')).toBeUndefined();
  });

  test('first-fit from 20000, stable across calls, high-water mark kept', async () => {
    expect(await allocatePorts(a, 1, 'web1', 'tcp', 1)).toEqual({ start: 20000, end: 20000 });
    expect(await allocatePorts(a, 1, 'web2', 'tcp', 3)).toEqual({ start: 20001, end: 20003 });
    expect(await allocatePorts(a, 1, 'web1', 'tcp', 1)).toEqual({ start: 20000, end: 20000 });
    expect(await a.get(keys.tcpPortsSequence(1))).toBe('20004');
    expect(await a.hgetall(keys.nodePorts(1))).toEqual({ 'web1/tcp': '20000-20000', 'web2/tcp': '20001-20003' });
  });

  test('freed ranges are reused first-fit; the high-water mark never goes down', async () => {
    await allocatePorts(a, 1, 'a1', 'tcp', 2);
    await allocatePorts(a, 1, 'b1', 'tcp', 2);
    await allocatePorts(a, 1, 'c1', 'tcp', 2);
    expect(await freePorts(a, 1, 'b1')).toEqual(['20002-20003']);
    expect(await allocatePorts(a, 1, 'd1', 'tcp', 3)).toEqual({ start: 20006, end: 20008 });
    expect(await allocatePorts(a, 1, 'e1', 'tcp', 2)).toEqual({ start: 20002, end: 20003 });
    expect(await a.get(keys.tcpPortsSequence(1))).toBe('20009');
  });

  test('a changed demand reallocates; demand 0 frees; tcp and udp and nodes are separate', async () => {
    await allocatePorts(a, 1, 'a1', 'tcp', 1);
    await allocatePorts(a, 1, 'b1', 'tcp', 1);
    expect(await allocatePorts(a, 1, 'a1', 'tcp', 3)).toEqual({ start: 20002, end: 20004 });
    expect(await allocatePorts(a, 1, 'a1', 'udp', 1)).toEqual({ start: 20000, end: 20000 });
    expect(await allocatePorts(a, 2, 'z1', 'tcp', 1)).toEqual({ start: 20000, end: 20000 });
    expect(await allocatePorts(a, 1, 'a1', 'tcp', 0)).toBeUndefined();
    expect(await readNodePorts(a, 1)).toEqual(new Map([['a1', { udp: { start: 20000, end: 20000 } }], ['b1', { tcp: { start: 20001, end: 20001 } }]]));
    expect(await a.get(keys.udpPortsSequence(1))).toBe('20001');
  });

  test('a range of another size keeps its first port when it can: shrunk in place, grown in place into free ports, else moved', async () => {
    expect(await allocatePorts(a, 1, 'a1', 'tcp', 3)).toEqual({ start: 20000, end: 20002 });
    expect(await allocatePorts(a, 1, 'b1', 'tcp', 1)).toEqual({ start: 20003, end: 20003 });
    expect(await allocatePorts(a, 1, 'b1', 'tcp', 4)).toEqual({ start: 20003, end: 20006 });
    expect(await allocatePorts(a, 1, 'a1', 'tcp', 1)).toEqual({ start: 20000, end: 20000 });
    expect(await allocatePorts(a, 1, 'a1', 'tcp', 3)).toEqual({ start: 20000, end: 20002 });
    // 20003 is b1's: a1 cannot grow in place and moves to the first gap of 4.
    expect(await allocatePorts(a, 1, 'a1', 'tcp', 4)).toEqual({ start: 20007, end: 20010 });
    expect(await a.get(keys.tcpPortsSequence(1))).toBe('20011');
  });

  test('exhaustion keeps the range the instance has', async () => {
    await allocatePorts(a, 1, 'small1', 'tcp', 2, { start: 20000, end: 20003 });
    await allocatePorts(a, 1, 'other1', 'tcp', 2, { start: 20000, end: 20003 });
    await expect(allocatePorts(a, 1, 'small1', 'tcp', 3, { start: 20000, end: 20003 })).rejects.toThrow(/small1: cannot allocate 3 TCP port/);
    expect((await readNodePorts(a, 1)).get('small1')).toEqual({ tcp: { start: 20000, end: 20001 } });
  });

  test('exhaustion is a clear error naming the instance and the node', async () => {
    await expect(allocatePorts(a, 1, 'big1', 'tcp', 5, { start: 20000, end: 20003 })).rejects.toThrow(/big1: cannot allocate 5 TCP port\(s\) on node 1/);
  });

  test('two agents allocating concurrently on two connections never hand out a port twice', async () => {
    const ids = Array.from({ length: 120 }, (_, i) => `app${i + 1}`);
    const calls = ids.flatMap((id, i) => [
      allocatePorts(i % 2 ? a : b, 1, id, 'tcp', 1 + (i % 4)),
      // Repeated calls for the same instance from the other agent must return the same range.
      allocatePorts(i % 2 ? b : a, 1, id, 'tcp', 1 + (i % 4)),
    ]);
    // Some instances are freed while others allocate, so freed ranges get reused concurrently.
    const frees = ids.filter((_, i) => i % 10 === 0).map((id) => freePorts(b, 1, id));
    const results = await Promise.all([...calls, ...frees]);
    const ranges = [...(await readNodePorts(a, 1)).entries()].map(([id, r]) => ({ id, r: r.tcp! }));
    for (let i = 0; i < ranges.length; i++) {
      for (let j = i + 1; j < ranges.length; j++) expect(overlaps(ranges[i]!.r, ranges[j]!.r)).toBe(false);
    }
    // Both agents got the same answer for every instance that was not freed in between.
    for (let i = 0; i < ids.length; i++) {
      if (i % 10 === 0) continue;
      expect(results[2 * i]).toEqual(results[2 * i + 1]);
      expect(rangeSize(results[2 * i] as PortRange)).toBe(1 + (i % 4));
    }
    // After a restart (new connections, same Redis), the same ranges come back.
    const c = new Redis(redis.url);
    try {
      for (const { id, r } of ranges) expect(await allocatePorts(c, 1, id, 'tcp', rangeSize(r))).toEqual(r);
    } finally {
      c.disconnect();
    }
  });
});

describe('NS8 default instances', () => {
  test('the first instance of a module takes the missing keys; a second one takes nothing', async () => {
    expect(await claimDefaultInstance(a, 'webapp1', 1, 'webapp', { cluster: true, node: true })).toEqual(['cluster/default_instance/webapp', 'node/1/default_instance/webapp']);
    expect(await claimDefaultInstance(a, 'webapp2', 1, 'webapp', { cluster: true, node: true })).toEqual([]);
    expect(await claimDefaultInstance(a, 'webapp3', 2, 'webapp', { cluster: true, node: true })).toEqual(['node/2/default_instance/webapp']);
    expect(await a.mget('cluster/default_instance/webapp', 'node/1/default_instance/webapp', 'node/2/default_instance/webapp')).toEqual(['webapp1', 'webapp1', 'webapp3']);
  });

  test('removal deletes every default-instance key naming the instance and no other', async () => {
    await a.mset('cluster/default_instance/webapp', 'webapp1', 'node/1/default_instance/webapp', 'webapp1', 'node/2/default_instance/webapp', 'webapp3', 'cluster/default_instance/mail', 'mail1', 'node/3/default_instance/x', 'webapp1');
    expect(await releaseDefaultInstance(a, 'webapp1')).toBe(3);
    expect((await a.keys('*default_instance*')).sort()).toEqual(['cluster/default_instance/mail', 'node/2/default_instance/webapp']);
    expect(await releaseDefaultInstance(a, 'webapp1')).toBe(0);
  });
});

describe('module Redis ACL users', () => {
  test('a module writes its own keys and channels, reads others, and cannot write another module or cluster/*', async () => {
    await a.set('cluster/some', 'x');
    const line = await applyModuleAcl(a, 'webapp1', 'pw-webapp1-0123456789');
    expect(aclLineMatches(line, 'webapp1', 'pw-webapp1-0123456789')).toBe(true);
    await applyModuleAcl(a, 'webapp2', 'pw-webapp2-0123456789');
    const m = new Redis(redis.url, { username: 'module/webapp1', password: 'pw-webapp1-0123456789', maxRetriesPerRequest: 1, enableReadyCheck: false });
    try {
      await m.hset('module/webapp1/environment', 'X', '1');
      await m.set('task/module/webapp1/t1/output', '{}');
      expect(await m.get('cluster/some')).toBe('x');
      expect(await m.hgetall('module/webapp2/environment')).toEqual({});
      await expect(m.set('module/webapp2/x', '1')).rejects.toThrow(/NOPERM/);
      await expect(m.set('cluster/x', '1')).rejects.toThrow(/NOPERM/);
      await expect(m.set('node/1/x', '1')).rejects.toThrow(/NOPERM/);
      await expect(m.publish('module/webapp2/event/x', '{}')).rejects.toThrow(/NOPERM/);
      expect(await m.publish('module/webapp1/event/configured', '{}')).toBe(0);
      await expect(m.call('ACL', 'LIST')).rejects.toThrow(/NOPERM/);
    } finally {
      m.disconnect();
    }
    // Mirrored into cluster/acls for replicas, one line per user.
    const acls = await a.smembers(CLUSTER_ACLS_KEY);
    expect(acls.filter((l) => l.startsWith('user module/webapp1 '))).toEqual([line]);
  });

  test('re-applying with a new password replaces the old one; deleting removes the user and its cluster/acls line', async () => {
    await applyModuleAcl(a, 'webapp1', 'old-password-0123456789');
    await applyModuleAcl(a, 'webapp1', 'new-password-0123456789');
    const c = redis.client();
    await expect(c.call('AUTH', 'module/webapp1', 'old-password-0123456789')).rejects.toThrow(/WRONGPASS/);
    expect(await c.call('AUTH', 'module/webapp1', 'new-password-0123456789')).toBe('OK');
    expect((await a.smembers(CLUSTER_ACLS_KEY)).filter((l) => l.startsWith('user module/webapp1 '))).toHaveLength(1);
    await deleteModuleAcl(a, 'webapp1');
    expect((await listAclUsers(a)).has('module/webapp1')).toBe(false);
    expect(await a.smembers(CLUSTER_ACLS_KEY)).toEqual([]);
    await deleteModuleAcl(a, 'webapp1');
  });
});

describe('desired modules read from Redis', () => {
  async function put(id: string, node: number, extra: Record<string, string> = {}): Promise<void> {
    const object = JSON.stringify({ apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: id }, spec: { image: 'r/webapp:1', node } });
    await a.hset(keys.desired('Module', id), { object, generation: '2', source: 'm.yaml', revision: '', applyset: 'default', finalizers: '', ...extra });
    await a.sadd(keys.desiredIndex('Module'), id);
    await a.hset(keys.moduleUuid(), id, `uuid-${id}`);
    await a.hset(keys.moduleNode(), id, String(node));
  }

  test('listForNode returns the node instances with uuid, generation, finalizers and deletion, in constant round trips', async () => {
    await put('web1', 1);
    await put('web2', 2);
    await put('web3', 1, { finalizers: 'node-agent', deleting: '{"removalPolicy":"Delete"}' });
    const src = new RedisDesiredSource(a);
    const before = Number((await a.info('stats')).match(/total_commands_processed:(\d+)/)![1]);
    const list = await src.listForNode(1);
    const after = Number((await a.info('stats')).match(/total_commands_processed:(\d+)/)![1]);
    expect(list.map((d) => d.id)).toEqual(['web1', 'web3']);
    expect(list[0]).toMatchObject({ generation: 2, uuid: 'uuid-web1', finalizers: [], spec: { image: 'r/webapp:1', node: 1 } });
    expect(list[0]!.deleting).toBeUndefined();
    expect(list[1]).toMatchObject({ finalizers: ['node-agent'], deleting: { removalPolicy: 'Delete' } });
    // SMEMBERS + HGETALL x3 + HGETALL uuid + the INFO itself.
    expect(after - before).toBe(6);
  });

  test('the finalizer is added once, refused for a deleting object, and its release removes the object, the bookkeeping and the configuration record', async () => {
    await put('web1', 1);
    await a.hset(keys.moduleConfiguration('web1'), { appliedHash: 'h', instanceUuid: 'uuid-web1' });
    await a.hset(keys.moduleConfiguration('web2'), { appliedHash: 'h2' });
    const src = new RedisDesiredSource(a);
    expect(await src.addFinalizer('web1')).toBe(true);
    expect(await src.addFinalizer('web1')).toBe(true);
    expect(await a.hget(keys.desired('Module', 'web1'), 'finalizers')).toBe('node-agent');
    expect(await src.addFinalizer('gone1')).toBe(false);
    await a.hset(keys.desired('Module', 'web1'), 'deleting', '{"removalPolicy":"Preserve"}');
    expect(await src.addFinalizer('web1')).toBe(false);
    await src.releaseFinalizer('web1');
    expect(await a.exists(keys.desired('Module', 'web1'))).toBe(0);
    expect(await a.sismember(keys.desiredIndex('Module'), 'web1')).toBe(0);
    expect(await a.hget(keys.moduleNode(), 'web1')).toBeNull();
    expect(await a.hget(keys.moduleUuid(), 'web1')).toBeNull();
    expect(await a.exists(keys.moduleConfiguration('web1'))).toBe(0);
    expect(await a.exists(keys.moduleConfiguration('web2'))).toBe(1);
  });

  test('releasing the finalizer of an object that is not being deleted keeps it and its configuration record', async () => {
    await put('web1', 1, { finalizers: 'other node-agent' });
    await a.hset(keys.moduleConfiguration('web1'), { appliedHash: 'h' });
    await new RedisDesiredSource(a).releaseFinalizer('web1');
    expect(await a.hget(keys.desired('Module', 'web1'), 'finalizers')).toBe('other');
    expect(await a.exists(keys.moduleConfiguration('web1'))).toBe(1);
  });
});
