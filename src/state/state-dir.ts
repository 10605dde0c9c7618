import os from 'node:os';
import path from 'node:path';

/**
 * Where ns8ctl keeps its local state (embedded Redis data, admin password): `--state-dir`, else
 * `NS8CTL_STATE_DIR`, else `$XDG_STATE_HOME/ns8ctl`, else `~/.local/state/ns8ctl`.
 */
export function resolveStateDir(flag?: string, env: NodeJS.ProcessEnv = process.env): string {
  if (flag) return path.resolve(flag);
  if (env.NS8CTL_STATE_DIR) return path.resolve(env.NS8CTL_STATE_DIR);
  const base = env.XDG_STATE_HOME || path.join(env.HOME || os.homedir(), '.local', 'state');
  return path.join(base, 'ns8ctl');
}
