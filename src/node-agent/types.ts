/**
 * Data the node agent's stages pass along: what is desired (from Redis), what is observed (host +
 * Redis), the agent's own record of what it did, the typed steps the planner emits, and the status
 * it reports. Plain data only.
 */
import type { ModuleSpec, RemovalPolicy } from '../manifest/types.js';
import type { PortProto, PortRange } from './ports.js';
import type { DeletionMark } from './removal-request.js';

/** The finalizer the node agent puts on every Module it creates something for. */
export const NODE_AGENT_FINALIZER = 'node-agent';

/** One Module placed on this node, as desired state says. */
export interface InstanceDesired {
  id: string;
  generation: number;
  spec: ModuleSpec;
  /** `cluster/module_uuid[id]`; empty when the bookkeeping is not there (yet). */
  uuid: string;
  /** metadata.labels of the Module (BackupSchedule selectors match them). */
  labels?: Record<string, string>;
  finalizers: string[];
  /** Set once deletion was requested: policy, and who asked, when and why (when recorded). */
  deleting?: DeletionMark;
}

/** Image facts, from `podman image inspect` (or the registry before a pull). */
export interface ImageFacts {
  url: string;
  /** Local image id (config digest, hex without `sha256:`); empty when only inspected remotely. */
  id: string;
  /** Manifest digest `sha256:...`. */
  digest: string;
  /** `RepoDigests[0]` (`repo@sha256:...`), empty when unknown. */
  repoDigest: string;
  labels: Record<string, string>;
}

/**
 * What the agent last did to an instance, kept on the node (one JSON file per instance under the
 * agent's state dir) so a reconcile can tell "unchanged" without asking podman or systemd.
 * Every field is written only after the effect it records happened.
 */
export interface InstanceRecord {
  id: string;
  /** Image URL the instance was last converged to. */
  imageUrl?: string;
  /** Labels of that image, keyed by the image digest they were read from. */
  image?: ImageFacts;
  rootfull?: boolean;
  /** Uid/gid the instance's files were made for (rootless): a different uid means the user was recreated. */
  uid?: number;
  gid?: number;
  /** Image id whose imageroot is extracted in the install dir. */
  extractedImageId?: string;
  /** Image id whose ui is extracted in the UI dir. */
  uiImageId?: string;
  /** The variables the agent wrote last, with their values (to drop the ones it no longer wants, and to tell drift from a wanted change). */
  managedEnv?: Record<string, string>;
  /** Unit name -> hash of (unit file, environment file) when it was last (re)started. */
  units?: Record<string, string>;
  /** System unit files installed for a rootfull instance: file name -> hash of content. */
  systemUnits?: Record<string, string>;
  /** Redis `ACL LIST` line after the ACL was last applied. */
  aclLine?: string;
  /** True once `cluster/event/module-added` was published. */
  announced?: boolean;
  /** Image URL pulled into root's store only to read its labels (no skopeo on the node); removed later. */
  rootCopy?: string;
  /** Volume base paths `<base>/<id>` was made in (spec.volumes values), for removal. */
  volumeBases?: string[];
  /** Node the instance was made on (for removal when desired state is gone). */
  node?: number;
  /**
   * Set when removal started (the request that started it, with who/when/why): the removal
   * resumes after a crash even if desired state vanished.
   */
  removing?: DeletionMark;
  /**
   * The NS8 lifecycle action the module agent still owes for `image` (create-module for a new
   * instance, update-module after an update), and the task submitted for it, if any.
   */
  lifecycle?: { action: 'create-module' | 'update-module'; image: string; taskId?: string };
  /**
   * An update that failed once it had touched the instance (extraction, environment, units) and
   * was rolled back to `from`. Not tried again for that `image` until the Module's `generation`
   * changes; cleared once the instance converges on a wanted image.
   */
  failedUpdate?: { image: string; from: string; generation: number; message: string };
  /**
   * A new instance whose Module says `restoreFrom`: its data is restored from that snapshot
   * before its environment is written, its units start and create-module runs. Recorded when the
   * instance is first held, so a crash neither loses the restore nor runs it on a live instance.
   * Also a recorded `ns8ctl restore` request (`request`) for an installed instance: its units are
   * stopped, the data restored, the units started again.
   */
  restore?: { destination: string; snapshot: string; from: string; done: boolean; restoredSnapshot?: string; request?: string };
  /**
   * An instance moving here from node `from` (`spec.node` changed): its data arrives by rsync
   * before its environment is written and its units start; `done` once the data and the source's
   * environment are in place, `completed` once the move record says done. A clone (a new
   * instance with `spec.cloneFrom`) arrives the same way from instance `source` on node `from`.
   */
  move?: { from: number; done: boolean; completed?: boolean; source?: string };
  /** `updatePolicy.backupFirst`: the snapshot taken before the update from `from` to `image`, restored if that update is rolled back. */
  preUpdate?: { image: string; from: string; destination: string; snapshot: string };
  /** destroy-module before removal: attempts made, task submitted, done (or given up). */
  destroy?: { attempts: number; taskId?: string; done?: boolean };
}

/** A Unix user as /etc/passwd has it. */
export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

/** State of one systemd unit of an instance. */
export interface UnitObservation {
  /** Unit name to enable and start (rootfull templates: `x@<id>.service`). */
  name: string;
  /** Unit file name where it is installed (rootless: in ~/.config/systemd/user; rootfull: in the system unit dir). */
  file: string;
  /** sha256 of the unit file (the installed one), empty when the file is missing. */
  fileHash: string;
  /** True when the unit has an [Install] section and is not a template: it must be enabled and running. */
  wanted: boolean;
  /** Symlinks for every WantedBy/RequiredBy target exist. */
  enabled: boolean;
  /** Running; undefined when systemd is not running. */
  active: boolean | undefined;
  /** `Type=oneshot` without RemainAfterExit: inactive after it ran, so a stopped one is not drift. */
  runsOnce?: boolean;
  /** Rootfull: the unit file in the install dir (source of the installed copy) and its hash. */
  source?: string;
  sourceHash?: string;
  /**
   * The module agent's unit (NS8's agent.service / agent@.service): a node-level file shared by
   * every instance, with the content it must have. Never removed with an instance.
   */
  nodeLevel?: { path: string; content: string };
  /** Folded into the unit's stamp: hash of state/agent.env for the module agent (new credentials -> restart). */
  extraHash?: string;
}

/** Everything observed about one instance on the host and in Redis. */
export interface ObservedInstance {
  id: string;
  record?: InstanceRecord;
  /** The instance's Unix user (rootless), when it exists. */
  user?: PasswdEntry;
  /** /etc/subuid and /etc/subgid both have a range for the user. */
  subids: boolean;
  /** Linger file present; undefined when systemd is not running. */
  linger?: boolean;
  /** Install dir exists (home/.config or /var/lib/nethserver/<id>). */
  installDir: boolean;
  /** The module image, when in the node image cache (or, for an instance converged before the cache, in the owner's image store). */
  localImage?: { id: string; digest: string };
  /** Service image URL -> present in the owner's image store. */
  serviceImages: Record<string, boolean>;
  /** `.imageroot.lst` exists and every file it lists exists, unedited (as far as the node cache knows the image's files). */
  imagerootIntact: boolean;
  /** Files listed in `.imageroot.lst` that are missing, or edited (`<file> (edited)`) (first few), for drift reports. */
  imagerootMissing: string[];
  /** Home (rootless) or /var/lib/nethserver/<id> (rootfull) exists. */
  baseExists: boolean;
  /**
   * Rootless only: what keeps the user from using its home, when something does (missing, another
   * owner, no rwx for its owner), as left by a useradd killed between writing /etc/passwd and
   * finishing the home.
   */
  homeUnusable?: string;
  /** Volume base path -> `<base>/<id>` exists (bases of spec.volumes and of the record). */
  volumeDirs: Record<string, boolean>;
  /** The UI dir exists. */
  uiPresent: boolean;
  /** Parsed state/environment; undefined when missing. */
  envFile?: Record<string, string>;
  /** Raw text of state/environment (for unit restart hashes); '' when missing. */
  envText: string;
  /** Owner uid of state/environment. */
  envFileUid?: number;
  /** `module/<id>/environment` in Redis. */
  envRedis: Record<string, string>;
  /** Parsed state/agent.env; undefined when missing. */
  agentEnv?: Record<string, string>;
  /** Mode bits of state/agent.env. */
  agentEnvMode?: number;
  agentEnvUid?: number;
  /** `ACL LIST` line of user `module/<id>`. */
  aclLine?: string;
  ports: { tcp?: PortRange; udp?: PortRange };
  /** `module/<id>/flags` members, sorted. */
  flags: string[];
  /** `cluster/authorizations/module/<id>` members, sorted. */
  authorizations: string[];
  /** NS8's built-in roles of the instance (`module/<id>/roles/owner|reader`), sorted. */
  roles: { owner: string[]; reader: string[] };
  /** `cluster/tcp_ports_demand[id]`, `cluster/udp_ports_demand[id]`. */
  portsDemand: { tcp?: string; udp?: string };
  /** Units found in the install dir's systemd dir (and their installed state). */
  units: UnitObservation[];
  /** `cluster/module_node[id]`. */
  moduleNode?: string;
  /**
   * NS8's default instances of the image's module (`cluster/default_instance/<module>`,
   * `node/<node>/default_instance/<module>`): their values, null when missing. Undefined when not read.
   */
  defaultInstance?: { module: string; cluster: string | null; node: string | null };
}

/** Node-wide facts the planner needs. */
export interface NodeFacts {
  node: number;
  /** Undefined when systemd runs; else why it cannot be used. */
  systemdMissing?: string;
  /** Where module agents reach Redis (`host:port`, written to agent.env as REDIS_ADDRESS); undefined: not written. */
  redisAddress?: string;
}

/** Where an instance lives on the host (computed from the layout, id and rootfull). */
export interface InstancePaths {
  /** Rootless: the user's home; rootfull: /var/lib/nethserver/<id>. */
  base: string;
  /** Where imageroot is extracted: home/.config or /var/lib/nethserver/<id>. */
  installDir: string;
  stateDir: string;
  /** Unit files as extracted from the image. */
  unitSourceDir: string;
  uiDir: string;
}

type StepBase = {
  id: string;
  /** Why the step is needed, for logs and plans. */
  reason: string;
  /** Set when the step repairs something the agent had done before (drift), e.g. `unit webapp.service stopped`. */
  drift?: string;
};

/** One thing the applier does to converge an instance. Mutating unless said otherwise. */
export type Step = StepBase &
  (
    | { kind: 'add-finalizer' }
    | { kind: 'cancel-removal' }
    | { kind: 'create-user' }
    | { kind: 'chown-home'; uid: number; gid: number }
    /** `usermod --add-subuids/--add-subgids`: a rootless user without both ranges cannot run podman. */
    | { kind: 'add-subids' }
    | { kind: 'create-install-dir' }
    /** NS8 node add-module: `<base>/<id>` (0700, owned by the module user) per volume base path. */
    | { kind: 'create-volume-dirs'; bases: string[] }
    | { kind: 'enable-linger' }
    | { kind: 'pull-image'; url: string }
    | { kind: 'pull-service-image'; url: string }
    /** One `podman create` for both: imageroot/ into the install dir and/or ui/ into the UI dir. */
    | { kind: 'extract-image'; url: string; imageroot?: string; uiroot?: string }
    | { kind: 'allocate-ports'; proto: PortProto; demand: number }
    | { kind: 'set-ports-demand'; proto: PortProto; demand: number }
    /**
     * `env` is what the file becomes given the observed file; the applier recomputes it from the
     * file as it is under `.environment.lock` (a module step may have written in between):
     * `managed` set, `dropped` (names the agent wrote before and no longer manages) removed,
     * `extra` (PREV_ variables of an update) set.
     */
    | { kind: 'write-environment'; env: Record<string, string>; managed: Record<string, string>; dropped: string[]; extra: Record<string, string> }
    | { kind: 'mirror-environment'; env: Record<string, string> }
    | { kind: 'write-agent-env' }
    | { kind: 'apply-acl' }
    | { kind: 'set-flags'; flags: string[] }
    /** `cluster/authorizations/module/<id>`, built-in owner/reader roles, then grants recomputed. */
    | { kind: 'set-authorizations'; authorizations: string[] }
    /** NS8 add-module step 8: the missing default-instance keys of `module` set to the instance (SET NX), grants recomputed. */
    | { kind: 'set-default-instance'; module: string; cluster: boolean; node: boolean }
    | { kind: 'install-system-units'; units: { source: string; name: string }[]; remove: string[] }
    /** Writes the module agent's unit file (node-level, shared by the instances). */
    | { kind: 'install-agent-unit'; path: string; content: string }
    | { kind: 'daemon-reload' }
    | { kind: 'enable-units'; units: string[] }
    | { kind: 'start-units'; units: string[] }
    | { kind: 'restart-units'; units: string[] }
    | { kind: 'stop-units'; units: string[] }
    | { kind: 'record-units'; units: Record<string, string> }
    | { kind: 'publish-added' }
    /** Move target: starts the rsync receiver for the source's data and publishes where it listens. */
    | { kind: 'receive-state'; from: number; volumes: string[]; source?: string }
    /** Move target: the source sent its final pass: receiver stopped, the source's environment imported. */
    | { kind: 'finish-receive'; from: number; source?: string }
    /** Move target: the instance runs here: the move record is done and cluster/module_node names this node. */
    | { kind: 'complete-move'; from: number; source?: string }
    /** Restores a new instance's state and volumes from snapshot `snapshot` of instance `from` in `destination` (keeping MODULE_UUID when free). */
    | { kind: 'restore-data'; destination: string; snapshot: string; from: string }
    /** NS8 create-module / update-module, as a task to the instance's module agent (bounded wait). */
    | { kind: 'run-lifecycle'; action: 'create-module' | 'update-module'; data: Record<string, unknown> }
    /** After an update: `podman rmi` (as the owner) of the previous module and service images no longer used (NS8's 95cleanup_images). */
    | { kind: 'remove-old-images'; refs: string[] }
    // removal
    /** Records the removal request on the host (`removing`), so the removal resumes after a crash. */
    | { kind: 'mark-removing'; removalPolicy: RemovalPolicy; request?: Omit<DeletionMark, 'removalPolicy'> }
    /** NS8 destroy-module, as a task to the instance's module agent, before anything is removed. */
    | { kind: 'run-destroy-module'; data: { module_id: string; preserve_data: boolean } }
    | { kind: 'disable-units'; units: string[] }
    | { kind: 'disable-linger' }
    | { kind: 'kill-processes' }
    | { kind: 'remove-user' }
    /** Erases the home or rootfull dir and every `<base>/<id>` volume dir. */
    | { kind: 'erase-data'; volumeBases: string[] }
    /** `podman rmi` as root (rootfull images, or the copy pulled to read labels) and the extraction container. */
    | { kind: 'remove-images'; refs: string[] }
    | { kind: 'free-ports' }
    | { kind: 'delete-acl' }
    | { kind: 'delete-module-keys' }
    | { kind: 'remove-ui' }
    | { kind: 'forget-record' }
    | { kind: 'publish-removed' }
    | { kind: 'release-finalizer' }
  );

export type StepKind = Step['kind'];

/**
 * One status condition (kstatus style). `Orphaned` (True) is set on an instance the node runs
 * whose desired object is missing: it is left running, neither converged nor removed.
 */
export interface Condition {
  type: 'Ready' | 'Progressing' | 'Degraded' | 'Orphaned';
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
  lastTransitionTime?: string;
}

/** Observed status of one instance, as stored in `keys.moduleStatus(id)`. */
export interface ModuleStatus {
  id: string;
  node: number;
  observedGeneration: number;
  conditions: Condition[];
  /** The image the instance runs (`IMAGE_URL`); during an update, the previous one until it is done. */
  imageUrl: string;
  imageDigest: string;
  /**
   * The image the Module's spec resolved to, when it differs from `imageUrl`: an update under way
   * or one that failed or was refused (the instance keeps running `imageUrl`). Absent otherwise.
   */
  targetImage?: string;
  ports: { tcp?: string; udp?: string };
  units: { name: string; enabled: boolean; active: boolean | null }[];
  /** Drift repaired in the last reconcile, one line each ("environment TCP_PORT edited"). */
  drift: string[];
}
