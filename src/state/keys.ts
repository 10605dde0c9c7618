/**
 * Every Redis key and channel ns8ctl reads or writes, in one place (docs/redis-keys.md lists them
 * with type, owner and meaning). NS8's own keys keep NS8's exact names.
 */
import type { Kind } from '../manifest/types.js';

const lower = (k: Kind): string => k.toLowerCase();

export const keys = {
  // ---- ns8ctl's own keys -------------------------------------------------------------------
  /**
   * HASH: one desired object. Fields: `object` (canonical JSON of {apiVersion, kind, metadata, spec}),
   * `generation` (INT, +1 only when the spec really changes), `source` (file), `revision` (git commit
   * or empty), `applyset` (inventory name), `finalizers` (space-separated, e.g. `node-agent`: set by
   * whoever must clean up before the object may vanish), `deleting` (empty, or the deletion mark:
   * JSON `{"removalPolicy":"Preserve"|"Delete","by","at","why"}` once deletion was requested and
   * finalizers remain; the older `{"removalPolicy"}` form stays valid).
   */
  desired: (kind: Kind, id: string): string => `ns8ctl/desired/${lower(kind)}/${id}`,
  /** SET: ids of the desired objects of one kind (lets reads avoid SCAN). */
  desiredIndex: (kind: Kind): string => `ns8ctl/desired/${lower(kind)}`,
  /** SET: `Kind/id` members that one apply set (`default`) created; prune touches only these. */
  inventory: (applySet: string): string => `ns8ctl/inventory/${applySet}`,
  /** SET: names of all apply sets that have an inventory. */
  inventories: (): string => 'ns8ctl/inventories',
  /** HASH: observed status of a module instance (conditions JSON, observedGeneration, ...). */
  moduleStatus: (id: string): string => `ns8ctl/status/module/${id}`,
  /** STREAM: bounded event history for `ns8ctl events`. */
  events: (): string => 'ns8ctl/events',
  /** HASH: ports allocated on a node: field `<module>/<proto>` -> `start-end`. */
  nodePorts: (node: number | string): string => `ns8ctl/node/${node}/ports`,
  /** SET: ids whose ranges in `nodePorts` are reservations for instances NS8 runs without ns8ctl. */
  nodeForeignPorts: (node: number | string): string => `ns8ctl/node/${node}/foreign_ports`,
  /**
   * STRING (JSON `{"id":"<uuid4>","created":"<ISO-8601>"}`): the identity of this cluster's desired
   * state, made (SET NX) by the first write of desired state and never overwritten; its absence
   * while instances run means desired state was wiped.
   */
  clusterEpoch: (): string => 'ns8ctl/cluster/epoch',
  /** STRING: controller leader lease: holder identity, expires (PX) unless renewed (src/controller/). */
  controllerLeader: (): string => 'ns8ctl/controller/leader',
  /**
   * HASH: status of a controller source (`default`, or the --source-name): `kind`, `url`, `branch`,
   * `path`, `prune`, `conditions` (JSON), `lastAppliedRevision`, `lastAttemptedRevision`,
   * `lastAppliedDigest`, `lastAppliedTime`, `lastError`.
   */
  sourceStatus: (name: string): string => `ns8ctl/source/${name}`,
  /**
   * HASH: the controller's summary conditions of one object: `conditions` (JSON array of
   * Ready/Reconciling/Stalled/Drifted), `observedGeneration`, `generation`, `lastAppliedRevision`,
   * `source`, `suspended`.
   */
  objectConditions: (kind: Kind, id: string): string => `ns8ctl/conditions/${lower(kind)}/${id}`,
  /**
   * STRING (JSON {reason, by, since, until?}, optional TTL): `ns8ctl suspend module ID` or
   * `source NAME`; while it exists the controller (and the node agent, for modules) leaves the
   * target alone.
   */
  suspension: (target: 'module' | 'source', name: string): string => `ns8ctl/suspend/${target}/${name}`,
  /**
   * HASH: the controller's record of a Module's declarative configuration: `appliedHash` (sha256
   * of the canonical spec.configuration configure-module last accepted), `appliedGeneration`,
   * `appliedTime`, `appliedTask`, `failedHash`/`failedGeneration`/`failedMessage` (last refused
   * configuration, masked), `drift` (JSON array of masked field-diff lines), `driftCheckedTime`,
   * and the task in flight: `pendingTask`, `pendingAction`, `pendingHash`, `pendingGeneration`,
   * `pendingSince`, `pendingWhy`; `instanceUuid` (the MODULE_UUID the record was written for: a record naming another uuid is not taken as applied).
   */
  moduleConfiguration: (id: string): string => `ns8ctl/configuration/module/${id}`,
  /**
   * HASH: the secret of a BackupDestination: field `password` (the restic repository password),
   * written by `ns8ctl backup set-password`. Under `ns8ctl/`, so module users cannot read it; only
   * the admin and the node agents can.
   */
  backupPassword: (name: string): string => `ns8ctl/secret/backup_destination/${name}`,
  /** HASH: field = instance id, JSON move record `{from, to, state, ...}` (written by apply, advanced by the node agents; node-agent/move/record.ts). */
  moves: (): string => 'ns8ctl/moves',
  /** HASH: field = the new instance's id, JSON clone record `{from, to, source, state, ...}` (written by the target's node agent when it creates a Module with spec.cloneFrom; node-agent/move/record.ts). */
  clones: (): string => 'ns8ctl/clones',
  /** HASH: field = instance id, the password of a move's or clone's rsync receiver (admin and node agents only). */
  moveSecrets: (): string => 'ns8ctl/secret/move',

  // ---- NS8 keys (exact NS8 layout) -------------------------------------------------------------
  /** STRING (INT): last instance number handed out for a module (`dokuwiki` -> 3). */
  moduleSequence: (module: string): string => `cluster/module_sequence/${module}`,
  /** HASH: instance id -> node id. */
  moduleNode: (): string => 'cluster/module_node',
  /** HASH: instance id -> uuid4. */
  moduleUuid: (): string => 'cluster/module_uuid',
  /** HASH: repository `url`, `status` ("1" enabled), `testing` ("1"). */
  repository: (name: string): string => `cluster/repository/${name}`,
  /** HASH: cached repodata: `data`, `updated`, `repo_view`; TTL 3600 s. */
  repositoryCache: (name: string): string => `cluster/repository_cache/${name}`,
  /** HASH: instance id -> tcp ports demand (NS8 cluster/tcp_ports_demand). */
  tcpPortsDemand: (): string => 'cluster/tcp_ports_demand',
  udpPortsDemand: (): string => 'cluster/udp_ports_demand',
  /** STRING (INT): highest node id NS8 handed out. */
  nodeSequence: (): string => 'cluster/node_sequence',
  /** HASH: NS8 node VPN record (`ip_address`, `endpoint`, ...): its presence means the node exists. */
  nodeVpn: (node: number | string): string => `node/${node}/vpn`,
  /** STRING: node display name. */
  nodeUiName: (node: number | string): string => `node/${node}/ui_name`,
  /** SET: node flags (`nomodules`). */
  nodeFlags: (node: number | string): string => `node/${node}/flags`,
  /** STRING (INT): historical port high-water mark the seeds name. */
  tcpPortsSequence: (node: number | string): string => `node/${node}/tcp_ports_sequence`,
  udpPortsSequence: (node: number | string): string => `node/${node}/udp_ports_sequence`,
  /** HASH: copy of the instance's state/environment file. */
  moduleEnvironment: (id: string): string => `module/${id}/environment`,
  /** SET: module flags (`rootless`, `core_module`, ...). */
  moduleFlags: (id: string): string => `module/${id}/flags`,
  /** Every key of an instance matches this pattern. */
  modulePattern: (id: string): string => `module/${id}/*`,
} as const;

/** Channels published on (NS8 naming: `<source>/event/<past-tense-name>`, JSON payload). */
export const channels = {
  moduleAdded: 'cluster/event/module-added',
  moduleRemoved: 'cluster/event/module-removed',
  /** Published by apply after desired state changed: `{"keys":["Module/dokuwiki1",...]}`. */
  desiredChanged: 'ns8ctl/event/desired-state-changed',
  /** Published by a node agent after it wrote `ns8ctl/status/module/<id>`: `{"module":"webapp1"}`. */
  moduleStatusChanged: 'ns8ctl/event/module-status-changed',
  /** Controller events (`source-applied`, `module-stalled`, ...; docs/controller.md lists them). */
  controllerEvent: (name: string): string => `ns8ctl/event/${name}`,
  /** Pattern matching every ns8ctl event channel (the controller PSUBSCRIBEs to it). */
  controllerEventPattern: 'ns8ctl/event/*',
} as const;
