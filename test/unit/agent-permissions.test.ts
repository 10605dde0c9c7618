import { describe, expect, it } from '@jest/globals';
import { checkTaskPermission, type PermissionStore } from '../../src/agent/authorizations.js';

/** Hashes and sets in memory; reads of a key listed in `broken` fail like a Redis error. */
function store(hashes: Record<string, Record<string, string>>, sets: Record<string, string[]>, broken: string[] = []): PermissionStore & { reads: string[] } {
  const reads: string[] = [];
  return {
    reads,
    hget: async (key, field) => {
      reads.push(key);
      return hashes[key]?.[field] ?? null;
    },
    smembers: async (key) => {
      reads.push(key);
      if (broken.includes(key)) throw new Error(`WRONGTYPE ${key}`);
      return sets[key] ?? [];
    },
  };
}

const roleSets = { 'module/traefik1/roles/routeadm': ['set-route', 'delete-route'], 'module/traefik1/roles/reader': ['get-*'], 'node/1/roles/portsadm': ['allocate-ports'] };

describe('checkTaskPermission', () => {
  it('allows the privileged submitter (no user, or cluster) without reading anything', async () => {
    const s = store({}, {});
    await expect(checkTaskPermission(s, 'module/traefik1', undefined, 'set-route')).resolves.toEqual({ allowed: true });
    await expect(checkTaskPermission(s, 'module/traefik1', '', 'set-route')).resolves.toEqual({ allowed: true });
    await expect(checkTaskPermission(s, 'node/1', 'cluster', 'allocate-ports', 'roles')).resolves.toEqual({ allowed: true });
    expect(s.reads).toEqual([]);
  });

  it('reads the role names of a module agent from its grants mirror by default', async () => {
    const s = store({ 'module/traefik1/grants': { 'module/web1': 'routeadm' } }, roleSets);
    await expect(checkTaskPermission(s, 'module/traefik1', 'module/web1', 'set-route')).resolves.toEqual({ allowed: true });
    expect(s.reads).toEqual(['module/traefik1/grants', 'module/traefik1/roles/routeadm']);
  });

  it('reads the role names from roles/<user> when asked to (node and cluster agents have no mirror)', async () => {
    const s = store({ 'roles/module/web1': { 'node/1': 'portsadm' } }, roleSets);
    await expect(checkTaskPermission(s, 'node/1', 'module/web1', 'allocate-ports', 'roles')).resolves.toEqual({ allowed: true });
    expect(s.reads).toEqual(['roles/module/web1', 'node/1/roles/portsadm']);
    // The same grant in the mirror only is not read from the roles source, and the other way round.
    await expect(checkTaskPermission(store({ 'node/1/grants': { 'module/web1': 'portsadm' } }, roleSets), 'node/1', 'module/web1', 'allocate-ports', 'roles')).resolves.toMatchObject({ allowed: false });
    await expect(checkTaskPermission(store({ 'roles/module/web1': { 'module/traefik1': 'routeadm' } }, roleSets), 'module/traefik1', 'module/web1', 'set-route')).resolves.toMatchObject({ allowed: false });
  });

  it('denies a user holding no role on the agent, saying so', async () => {
    await expect(checkTaskPermission(store({}, roleSets), 'module/traefik1', 'module/web1', 'set-route')).resolves.toEqual({ allowed: false, reason: 'module/web1 holds no role on module/traefik1' });
  });

  it('allows an action matching a glob of any role held, and denies one matching none, naming the roles', async () => {
    const s = store({ 'module/traefik1/grants': { 'module/web1': 'reader,routeadm' } }, roleSets);
    await expect(checkTaskPermission(s, 'module/traefik1', 'module/web1', 'get-route')).resolves.toEqual({ allowed: true });
    await expect(checkTaskPermission(s, 'module/traefik1', 'module/web1', 'set-certificate')).resolves.toEqual({
      allowed: false,
      reason: 'module/web1 holds roles reader,routeadm on module/traefik1, which do not allow action set-certificate',
    });
    const one = store({ 'module/traefik1/grants': { 'module/web1': 'reader' } }, roleSets);
    await expect(checkTaskPermission(one, 'module/traefik1', 'module/web1', 'set-route')).resolves.toEqual({
      allowed: false,
      reason: 'module/web1 holds role reader on module/traefik1, which does not allow action set-route',
    });
  });

  it('fails closed: a role set that cannot be read allows nothing, the other roles still count', async () => {
    const s = store({ 'module/traefik1/grants': { 'module/web1': 'reader,routeadm' } }, roleSets, ['module/traefik1/roles/routeadm']);
    await expect(checkTaskPermission(s, 'module/traefik1', 'module/web1', 'set-route')).resolves.toMatchObject({ allowed: false });
    await expect(checkTaskPermission(s, 'module/traefik1', 'module/web1', 'get-route')).resolves.toEqual({ allowed: true });
  });
});
