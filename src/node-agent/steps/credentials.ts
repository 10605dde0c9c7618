import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Ns8ctlError } from '../../errors.js';
import { keys } from '../../state/keys.js';
import { writeFileAtomic } from '../atomic-write.js';
import { parseEnvironment, renderEnvironment } from '../environment-file.js';
import { claimDefaultInstance } from '../default-instance.js';
import { authorizationsKey } from '../observe.js';
import { applyGrants } from '../../agent/authorizations.js';
import { OWNER_ROLE, READER_ROLE, agentEnvironment } from '../planner.js';
import { applyModuleAcl, deleteModuleAcl, generatePassword } from '../redis-acl.js';
import { paths, purposeOf, type StepHandlers } from './context.js';

/** Redis credentials (state/agent.env, the ACL user), flags, authorizations, roles, default instances. */
export const credentialsSteps: StepHandlers<'write-agent-env' | 'apply-acl' | 'delete-acl' | 'set-flags' | 'set-authorizations' | 'set-default-instance'> = {
  'write-agent-env': async (_step, ctx) => {
    const { deps, id } = ctx;
    const { p, user } = await paths(ctx);
    const file = path.join(p.stateDir, 'agent.env');
    let old: Record<string, string> = {};
    try {
      old = parseEnvironment(await fs.readFile(file, 'utf8'));
    } catch {
      /* missing: a new password */
    }
    const password = old.REDIS_PASSWORD && /^[A-Za-z0-9_-]{16,}$/.test(old.REDIS_PASSWORD) ? old.REDIS_PASSWORD : generatePassword();
    const text = renderEnvironment(id, agentEnvironment(p.installDir, password, id, deps.redisAddress));
    await writeFileAtomic(file, text, { mode: 0o600, uid: user?.uid ?? 0, gid: user?.gid ?? 0 });
  },
  'apply-acl': async (step, ctx) => {
    const { deps, id } = ctx;
    const purpose = purposeOf(step);
    const { p } = await paths(ctx);
    const env = parseEnvironment(await fs.readFile(path.join(p.stateDir, 'agent.env'), 'utf8'));
    if (!env.REDIS_PASSWORD) throw new Ns8ctlError('agent_env_invalid', `${purpose}: ${path.join(p.stateDir, 'agent.env')} has no REDIS_PASSWORD`, { user: false });
    const line = await applyModuleAcl(deps.redis, id, env.REDIS_PASSWORD);
    await deps.records.update(id, { aclLine: line });
  },
  'delete-acl': async (_step, ctx) => {
    const { deps, id } = ctx;
    await deleteModuleAcl(deps.redis, id);
  },
  'set-flags': async (step, ctx) => {
    const { deps, id } = ctx;
    const key = keys.moduleFlags(id);
    const tx = deps.redis.multi().del(key);
    if (step.flags.length) tx.sadd(key, ...step.flags);
    await tx.exec();
  },
  'set-authorizations': async (step, ctx) => {
    const { deps, id } = ctx;
    const tx = deps.redis.multi().del(authorizationsKey(id));
    if (step.authorizations.length) tx.sadd(authorizationsKey(id), ...step.authorizations);
    tx.del(`module/${id}/roles/owner`).sadd(`module/${id}/roles/owner`, ...OWNER_ROLE);
    tx.del(`module/${id}/roles/reader`).sadd(`module/${id}/roles/reader`, ...READER_ROLE);
    await tx.exec();
    await applyGrants(deps.redis);
  },
  'set-default-instance': async (step, ctx) => {
    const { deps, id, node } = ctx;
    const set = await claimDefaultInstance(deps.redis, id, node, step.module, step);
    // `<module>@node` / `<module>@cluster` grants of other instances now resolve to this one.
    if (set.length) await applyGrants(deps.redis);
  },
};

