/**
 * The resource model: what a manifest document becomes once loaded and validated.
 * Schemas in schemas/*.schema.json are the source of truth for field rules; these types mirror them.
 */

/** apiVersion every ns8ctl document carries. */
export const API_VERSION = 'ns8ctl.nethserver.org/v1';

/** The kinds ns8ctl knows. */
export const KINDS = ['Module', 'Repository', 'Node', 'BackupDestination', 'BackupSchedule'] as const;
export type Kind = (typeof KINDS)[number];

/** Where a document came from, for error messages and the recorded applied source. */
export interface SourceRef {
  /** File path as given on the command line (relative paths kept relative), `-` for stdin. */
  file: string;
  /** 0-based index of the document inside a multi-document YAML file. */
  doc: number;
  /** 1-based line/column of the document start. */
  line: number;
  col: number;
}

export interface Metadata {
  name: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

/** What happens to an instance's data when it is removed. */
export type RemovalPolicy = 'Preserve' | 'Delete';

export interface ModuleSpec {
  /** Module name looked up in repositories (`dokuwiki`). Exactly one of `module` and `image`. */
  module?: string;
  /** Full image URL (`ghcr.io/nethserver/dokuwiki:1.2.3`): bypasses repositories. */
  image?: string;
  /** `latest` (default), an exact version `1.2.3`, or a semver range `^1.2`. Only with `module`. */
  version?: string;
  /** Id of the node the instance runs on. */
  node: number;
  /** Instances (any node) that must be Ready before this one is created; sorted, no duplicates. */
  dependsOn?: string[];
  /** Volume name -> absolute base path on the node (NS8 add-module `volumes`). */
  volumes?: Record<string, string>;
  /** Free-form input for the module's configure-module action. */
  configuration?: Record<string, unknown>;
  /** Data on removal: `Preserve` (default) keeps home and volumes, `Delete` erases them. */
  removalPolicy?: RemovalPolicy;
  /** When true, the reconcile loop leaves this instance alone. */
  suspend?: boolean;
  /** Data the instance is created from: a snapshot of a BackupDestination. Used only at creation. */
  restoreFrom?: RestoreFrom;
  /** Id of another instance this one is created as a copy of. Used only at creation. */
  cloneFrom?: string;
  /** How updates of this instance are made. */
  updatePolicy?: UpdatePolicy;
}

export interface BackupDestinationSpec {
  /** restic repository: an absolute local path (/srv/backup/ns8), `rest:http(s)://host[:port]/path`, or `sftp:user@host:/path`. */
  url: string;
}

export interface BackupRetention {
  keepLast?: number;
  keepDaily?: number;
}

export interface BackupScheduleSpec {
  /** Name of a BackupDestination. */
  destination: string;
  /** Instance ids to back up; with `selector`, the union. At least one of the two. */
  instances?: string[];
  /** Modules whose metadata.labels contain all these pairs. */
  selector?: { matchLabels: Record<string, string> };
  /** systemd OnCalendar expression (daily, weekly, `*-*-* 02:30:00`, `Mon..Fri 22:00`). */
  schedule: string;
  /** Snapshots kept per instance after each run; default keepLast 7. */
  retention?: BackupRetention;
  /** When true, no scheduled runs (manual `backup run` still works). */
  suspend?: boolean;
}

export interface RestoreFrom {
  destination: string;
  /** `latest` (default) or a restic snapshot id (8-64 hex). */
  snapshot?: string;
  /** Whose backups: the id of the instance backed up (default: the Module's own id). */
  instance?: string;
}

export interface UpdatePolicy {
  /** Snapshot before an update; restore it with the previous image when the update fails. */
  backupFirst?: boolean;
}

export interface RepositorySpec {
  url: string;
  enabled?: boolean;
  testing?: boolean;
}

export interface NodeSpec {
  /** NS8 numeric node id (>= 1). */
  id: number;
  /** Host name or IP address the node is reached at. */
  address?: string;
  /** NS8 node flags, e.g. `nomodules`. */
  flags?: string[];
}

interface BaseObject<K extends Kind, S> {
  apiVersion: typeof API_VERSION;
  kind: K;
  metadata: Metadata;
  spec: S;
}

export type ModuleObject = BaseObject<'Module', ModuleSpec>;
export type RepositoryObject = BaseObject<'Repository', RepositorySpec>;
export type NodeObject = BaseObject<'Node', NodeSpec>;
export type BackupDestinationObject = BaseObject<'BackupDestination', BackupDestinationSpec>;
export type BackupScheduleObject = BaseObject<'BackupSchedule', BackupScheduleSpec>;
export type ManifestObject = ModuleObject | RepositoryObject | NodeObject | BackupDestinationObject | BackupScheduleObject;

/** A validated object together with where it came from. */
export interface DesiredObject<T extends ManifestObject = ManifestObject> {
  object: T;
  source: SourceRef;
}

/**
 * Identity of an object inside its kind: the instance id for Module, the name for Repository,
 * BackupDestination and BackupSchedule, the numeric id (as a string) for Node.
 */
export function objectId(obj: ManifestObject): string {
  return obj.kind === 'Node' ? String(obj.spec.id) : obj.metadata.name;
}

/** `kind/id` key used by plans, inventories and Redis keys (`Module/dokuwiki1`). */
export function objectKey(obj: ManifestObject): string {
  return `${obj.kind}/${objectId(obj)}`;
}

/**
 * NS8 module name of an image URL or bare name: last path segment without `:tag` or `@digest`
 * (`ghcr.io/nethserver/samba:1.0` -> `samba`), as NS8's get_image_name_from_url.
 */
export function moduleNameOf(spec: Pick<ModuleSpec, 'module' | 'image'>): string {
  const ref = spec.module ?? spec.image ?? '';
  const last = ref.split('/').pop() ?? '';
  return last.replace(/@.*$/, '').replace(/:.*$/, '');
}

/** Splits an instance id into module name and numeric suffix (`dokuwiki12` -> [dokuwiki, 12]). */
export function splitInstanceId(id: string): { module: string; n: number } | undefined {
  const m = /^(.*?)([1-9][0-9]*)$/.exec(id);
  if (!m || !m[1]) return undefined;
  return { module: m[1], n: Number(m[2]) };
}
