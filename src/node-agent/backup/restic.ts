/**
 * Restic, the way NS8's `module-backup` and `restore-module` use it, as pure functions: where an
 * instance's repository is, what a snapshot holds, the script that lays an instance out under
 * `/srv` in a private mount namespace, and restic's JSON output read back.
 *
 * The layout is NS8's: the working directory is `/srv`, the state directory is `/srv/state`, each
 * podman volume `/srv/volumes/<name>` (a rootfull instance's `<id>-<name>` volumes lose the
 * prefix). The snapshot always holds `state/environment` (restore reads the image and the
 * MODULE_UUID from it), then what `etc/state-include.conf` lists, minus `etc/state-exclude.conf`.
 * The repository of an instance is `<destination>/<image name>/<MODULE_UUID>`.
 */
import { Ns8ctlError } from '../../errors.js';
import { shq } from '../host/owner.js';

/** A restic repository root, as a BackupDestination names it. */
export interface ResticDestination {
  /** A local absolute path, `rest:http(s)://host:port/[path]`, or `sftp:[user@]host:/path`. */
  url: string;
}

/** What the namespace script binds under /srv. */
export interface SrvLayout {
  stateDir: string;
  installDir: string;
  /** Volume names as podman knows them (rootfull: `<id>-<name>`), each bound at `/srv/volumes/<shown>`. */
  volumes: readonly { podmanName: string; shown: string }[];
}

/** The summary line of `restic backup --json`. */
export interface BackupSummary {
  snapshotId: string;
  filesNew: number;
  filesChanged: number;
  bytesProcessed: number;
  bytesAdded: number;
  durationS: number;
}

/** One snapshot, as `restic snapshots --json` lists it. */
export interface SnapshotInfo {
  id: string;
  shortId: string;
  time: string;
  paths: string[];
  tags: string[];
}

/** The kind of a destination URL, or an error naming the allowed forms. */
export function destinationKind(url: string): 'local' | 'rest' | 'sftp' {
  if (url.startsWith('/')) return 'local';
  if (/^rest:https?:\/\/[^/\s]+(\/\S*)?$/.test(url)) return 'rest';
  if (/^sftp:[^\s:]+:\/\S*$/.test(url)) return 'sftp';
  throw new Ns8ctlError('backup_destination_invalid', `backup destination url ${JSON.stringify(url)}: expected a local absolute path, rest:http(s)://host:port/path or sftp:user@host:/path`);
}

/** The image name of an image URL without registry, tag or digest (`ghcr.io/nethserver/mail:1.2` -> `mail`), as NS8's get_image_name_from_url. */
export function imageName(imageUrl: string): string {
  const noDigest = imageUrl.split('@')[0] as string;
  const last = noDigest.split('/').pop() as string;
  return last.split(':')[0] as string;
}

/** The instance's own repository in a destination: `<url>/<image name>/<MODULE_UUID>`. */
export function instanceRepository(dest: ResticDestination, imageUrl: string, moduleUuid: string): string {
  destinationKind(dest.url);
  if (!/^[A-Za-z0-9-]{1,64}$/.test(moduleUuid)) throw new Ns8ctlError('backup_target_invalid', `MODULE_UUID ${JSON.stringify(moduleUuid)} is not a UUID`);
  return `${dest.url.replace(/\/+$/, '')}/${imageName(imageUrl)}/${moduleUuid}`;
}

/** Volumes of an instance as bound under /srv/volumes: rootless names as they are, rootfull `<id>-<name>` -> `<name>`; `restic-*` skipped. */
export function srvVolumes(podmanNames: readonly string[], id: string, rootfull: boolean): { podmanName: string; shown: string }[] {
  const out: { podmanName: string; shown: string }[] = [];
  for (const name of podmanNames) {
    if (!name || name.startsWith('restic-')) continue;
    if (!rootfull) out.push({ podmanName: name, shown: name });
    else if (name.startsWith(`${id}-`)) out.push({ podmanName: name, shown: name.slice(id.length + 1) });
  }
  return out;
}

/**
 * The shell script that binds the instance under /srv (a tmpfs over /srv, private to the
 * namespace it runs in) and then runs `"$@"` from /srv. Each volume's mount point is asked of
 * podman inside the namespace, so rootless storage paths need no guessing.
 */
export function srvScript(layout: SrvLayout): string {
  const lines = ['set -e', 'mount -t tmpfs -o mode=0755 ns8ctl-backup /srv', 'mkdir -p /srv/state /srv/volumes', `mount --bind ${shq(layout.stateDir)} /srv/state`];
  for (const v of layout.volumes) {
    lines.push(`mp=$(podman volume inspect --format '{{.Mountpoint}}' ${shq(v.podmanName)})`, `mkdir -p /srv/volumes/${shq(v.shown)}`, `mount --bind "$mp" /srv/volumes/${shq(v.shown)}`);
  }
  lines.push('cd /srv', 'exec "$@"');
  return lines.join('\n');
}

/** `restic backup` arguments: state/environment always, then the module's include and exclude lists when present. */
export function backupArgs(opts: { includeFile?: string; excludeFile?: string; tags?: readonly string[] }): string[] {
  const args = ['backup', '--json', 'state/environment'];
  if (opts.includeFile) args.push(`--files-from=${opts.includeFile}`);
  if (opts.excludeFile) args.push(`--exclude-file=${opts.excludeFile}`);
  for (const t of opts.tags ?? []) args.push('--tag', t);
  return args;
}

/** The summary of `restic backup --json` (the last `summary` message); throws when absent. */
export function parseBackupSummary(stdout: string): BackupSummary {
  for (const line of stdout.split('\n').reverse()) {
    if (!line.startsWith('{')) continue;
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      continue;
    }
    if (msg.message_type !== 'summary' || typeof msg.snapshot_id !== 'string') continue;
    const n = (k: string): number => (typeof msg[k] === 'number' ? (msg[k] as number) : 0);
    return { snapshotId: msg.snapshot_id, filesNew: n('files_new'), filesChanged: n('files_changed'), bytesProcessed: n('total_bytes_processed'), bytesAdded: n('data_added'), durationS: n('total_duration') };
  }
  throw new Ns8ctlError('backup_failed', 'restic backup printed no summary: the snapshot was not written');
}

/** `restic snapshots --json`, oldest first. */
export function parseSnapshots(stdout: string): SnapshotInfo[] {
  let raw: unknown;
  try {
    raw = JSON.parse(stdout.trim() || '[]');
  } catch {
    throw new Ns8ctlError('backup_failed', 'restic snapshots printed no JSON list');
  }
  if (!Array.isArray(raw)) throw new Ns8ctlError('backup_failed', 'restic snapshots printed no JSON list');
  return raw.map((s: Record<string, unknown>) => ({
    id: String(s.id ?? ''),
    shortId: String(s.short_id ?? String(s.id ?? '').slice(0, 8)),
    time: String(s.time ?? ''),
    paths: Array.isArray(s.paths) ? s.paths.map(String) : [],
    tags: Array.isArray(s.tags) ? s.tags.map(String) : [],
  }));
}

/** Snapshots kept per instance after a backup (restic `forget`). */
export interface Retention {
  keepLast?: number;
  keepDaily?: number;
}

/** `restic forget` keep options; at least one, each an integer 1..1000. */
export function retentionArgs(r: Retention): string[] {
  const args: string[] = [];
  for (const [name, flag] of [['keepLast', 'keep-last'], ['keepDaily', 'keep-daily']] as const) {
    const n = r[name];
    if (n === undefined) continue;
    if (!Number.isInteger(n) || n < 1 || n > 1000) throw new Ns8ctlError('backup_retention_invalid', `${flag} ${n}: expected an integer from 1 to 1000`);
    args.push(`--${flag}=${n}`);
  }
  if (!args.length) throw new Ns8ctlError('backup_retention_invalid', 'retention: expected keepLast or keepDaily (integers from 1 to 1000)');
  return args;
}

/** A snapshot argument: `latest` or a hex id of 8 to 64 digits. */
export function checkSnapshotRef(ref: string): string {
  if (ref === 'latest' || /^[0-9a-f]{8,64}$/.test(ref)) return ref;
  throw new Ns8ctlError('snapshot_invalid', `snapshot ${JSON.stringify(ref)}: expected latest or a snapshot id (8 to 64 hex digits)`);
}
