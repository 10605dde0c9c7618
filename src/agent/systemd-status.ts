/**
 * What get-status needs from systemd: active/enabled/failed for a set of units. An interface so
 * tests and the node agent can supply their own; the production adapter asks `systemctl show`
 * once for all units through the command runner.
 */
import type { CommandRunner } from '../host/runner.js';

/** One unit's state, in NS8 get-status form (name without `.service`). */
export interface ServiceStatus {
  name: string;
  active: boolean;
  enabled: boolean;
  failed: boolean;
}

/** Reads unit states in the user manager (`user`) or the system manager (`system`). */
export interface SystemdAdapter {
  serviceStatus(units: readonly string[], scope: 'user' | 'system'): Promise<ServiceStatus[]>;
}

/** Parses `systemctl show -p Id,ActiveState,UnitFileState` output (blank-line separated blocks). */
export function parseSystemctlShow(text: string): Map<string, { active: string; enabled: string }> {
  const out = new Map<string, { active: string; enabled: string }>();
  for (const block of text.split(/\n\s*\n/)) {
    const props = new Map<string, string>();
    for (const line of block.split('\n')) {
      const eq = line.indexOf('=');
      if (eq > 0) props.set(line.slice(0, eq), line.slice(eq + 1));
    }
    const id = props.get('Id');
    if (id) out.set(id, { active: props.get('ActiveState') ?? '', enabled: props.get('UnitFileState') ?? '' });
  }
  return out;
}

/** Production adapter: one `systemctl [--user] show` for all units. */
export class SystemctlStatusAdapter implements SystemdAdapter {
  constructor(private readonly runner: CommandRunner) {}

  async serviceStatus(units: readonly string[], scope: 'user' | 'system'): Promise<ServiceStatus[]> {
    if (units.length === 0) return [];
    const argv = ['systemctl', ...(scope === 'user' ? ['--user'] : []), 'show', '--property=Id,ActiveState,UnitFileState', '--', ...units];
    const rec = await this.runner.run(argv, { allowFailure: true, purpose: 'get-status: read unit states' });
    const states = parseSystemctlShow(rec.stdout);
    return units.map((u) => {
      const s = states.get(u);
      return { name: u.replace(/\.service$/, ''), active: s?.active === 'active', enabled: s?.enabled === 'enabled', failed: s?.active === 'failed' };
    });
  }
}
