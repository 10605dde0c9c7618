import { promises as fs } from 'node:fs';
import path from 'node:path';
import { keys } from '../../state/keys.js';
import { mergeEnvironment } from '../module-env.js';
import { writeFileAtomic } from '../atomic-write.js';
import { parseEnvironment, renderEnvironment } from '../environment-file.js';
import { withFileLock } from '../../host/file-lock.js';
import { paths, type StepHandlers } from './context.js';

/** state/environment (under NS8's .environment.lock) and its Redis mirror. */
export const environmentSteps: StepHandlers<'write-environment' | 'mirror-environment'> = {
  'write-environment': async (step, ctx) => {
    const { deps, id } = ctx;
    const { p, user } = await paths(ctx);
    const file = path.join(p.stateDir, 'environment');
    const owner = { uid: user?.uid ?? 0, gid: user?.gid ?? 0 };
    // Under NS8's `.environment.lock` (the agent's set_env takes it too): re-read, merge, write.
    await withFileLock(path.join(p.stateDir, '.environment.lock'), async () => {
      const current = parseEnvironment(await fs.readFile(file, 'utf8').catch(() => ''));
      const env = { ...mergeEnvironment(current, step.managed, step.dropped), ...step.extra };
      await writeFileAtomic(file, renderEnvironment(id, env), { mode: 0o644, ...owner });
    }, { owner });
    await deps.records.update(id, { managedEnv: step.managed });
  },
  'mirror-environment': async (step, ctx) => {
    const { deps, id } = ctx;
    const key = keys.moduleEnvironment(id);
    const tx = deps.redis.multi().del(key);
    if (Object.keys(step.env).length) tx.hset(key, step.env);
    await tx.exec();
  },
};

