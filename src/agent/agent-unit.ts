/**
 * The systemd units that run `ns8ctl agent` for an instance, as NS8's agent.service (rootless,
 * a user unit started by the lingering user manager) and agent@.service (rootfull, a system
 * template unit). The node agent installs them; `ns8ctl` is named by absolute path.
 */

/** What the unit runs. */
export interface AgentUnitOptions {
  /** Absolute command line prefix that runs ns8ctl, e.g. `['/usr/bin/node', '/opt/ns8ctl/dist/src/cli/bin.js']`. */
  ns8ctl: readonly string[];
  /** Optional base actions directory (NS8's AGENT_BASEACTIONS_DIR). */
  baseActionsDir?: string;
  /** Global agent env file, optional (`-` prefix: may be missing). Default /etc/nethserver/agent.env. */
  globalEnvFile?: string;
}

const quote = (s: string): string => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `"${s.replace(/(["\\])/g, '\\$1')}"`);

function execStart(opts: AgentUnitOptions, idSpecifier: string, rootfull: boolean): string {
  const args = [...opts.ns8ctl, 'agent', '--id', idSpecifier, '--install-dir', rootfull ? '/var/lib/nethserver/%i' : '%E', '--state-dir', rootfull ? '/var/lib/nethserver/%i/state' : '%E/state'];
  if (rootfull) args.push('--rootfull');
  if (opts.baseActionsDir) args.push('--actionsdir', opts.baseActionsDir);
  args.push('--actionsdir', rootfull ? '/var/lib/nethserver/%i/actions' : '%E/actions', '--eventsdir', rootfull ? '/var/lib/nethserver/%i/events' : '%E/events');
  return args.map(quote).join(' ');
}

/** `agent.service` for `/etc/systemd/user/` (rootless: `%u` is the instance id). */
export function renderRootlessAgentUnit(opts: AgentUnitOptions): string {
  return `[Unit]
Description=ns8ctl module agent of %u

[Service]
Type=simple
Environment=AGENT_ID=module/%u
Environment=AGENT_INSTALL_DIR=%E
Environment=AGENT_STATE_DIR=%E/state
EnvironmentFile=-${opts.globalEnvFile ?? '/etc/nethserver/agent.env'}
EnvironmentFile=-%E/state/agent.env
WorkingDirectory=%E/state
ExecStartPre=-/bin/chmod 644 environment
ExecStart=${execStart(opts, '%u', false)}
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=5s

[Install]
WantedBy=default.target
`;
}

/** `agent@.service` for `/etc/systemd/system/` (rootfull: `%i` is the instance id). */
export function renderRootfullAgentUnit(opts: AgentUnitOptions): string {
  return `[Unit]
Description=ns8ctl module agent of %i
After=network-online.target

[Service]
Type=simple
Environment=AGENT_ID=module/%i
Environment=AGENT_INSTALL_DIR=/var/lib/nethserver/%i
Environment=AGENT_STATE_DIR=/var/lib/nethserver/%i/state
EnvironmentFile=-${opts.globalEnvFile ?? '/etc/nethserver/agent.env'}
EnvironmentFile=-/var/lib/nethserver/%i/state/agent.env
WorkingDirectory=/var/lib/nethserver/%i/state
ExecStartPre=-/bin/chmod 644 environment
ExecStart=${execStart(opts, '%i', true)}
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=5s

[Install]
WantedBy=multi-user.target
`;
}
