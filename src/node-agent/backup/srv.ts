/**
 * An instance laid out under `/srv` as NS8's backup and transfer steps see it (`state/`,
 * `volumes/<name>/`), in a private mount namespace: for a rootless instance inside its own user
 * namespace (`podman unshare`), so file owners are the ids its containers see; for a rootfull one
 * as root. Commands run there from `/srv`. Used by backups (engine.ts) and transfers (transfer.ts).
 */
import type { CommandRecord, CommandRunner, RunOptions } from '../../host/runner.js';
import { asOwner, type Owner } from '../host/owner.js';
import { srvScript, srvVolumes } from './restic.js';

/** The instance a backup, restore or transfer is about. */
export interface SrvTarget {
  id: string;
  owner: Owner;
  rootfull: boolean;
  stateDir: string;
  installDir: string;
}

/** Podman volumes of the instance, as bound under /srv/volumes. */
export async function srvVolumesOf(runner: CommandRunner, target: SrvTarget): Promise<{ podmanName: string; shown: string }[]> {
  const ls = asOwner(target.owner, ['podman', 'volume', 'ls', '--format', '{{.Name}}'], { purpose: `${target.id}: list volumes` });
  const res = await runner.run(ls.argv, ls.opts);
  return srvVolumes(res.stdout.split('\n').map((l) => l.trim()), target.id, target.rootfull);
}

/** Creates the instance's volume `shown` (rootfull: `<id>-<shown>`) unless it exists. */
export async function ensureSrvVolume(runner: CommandRunner, target: SrvTarget, shown: string): Promise<void> {
  const name = target.rootfull ? `${target.id}-${shown}` : shown;
  const exists = asOwner(target.owner, ['podman', 'volume', 'exists', name], { allowFailure: true, purpose: `${target.id}: volume ${name} exists?` });
  if ((await runner.run(exists.argv, exists.opts)).exitCode === 0) return;
  const create = asOwner(target.owner, ['podman', 'volume', 'create', name], { purpose: `${target.id}: create volume ${name}`, mutating: true });
  await runner.run(create.argv, create.opts);
}

/** Runs argv from /srv in the instance's namespace, as its owner. */
export async function runInSrv(runner: CommandRunner, target: SrvTarget, argv: readonly string[], opts: RunOptions): Promise<CommandRecord> {
  const script = srvScript({ stateDir: target.stateDir, installDir: target.installDir, volumes: await srvVolumesOf(runner, target) });
  const ns = target.owner.kind === 'root' ? ['unshare', '--mount', '--propagation', 'private'] : ['podman', 'unshare', 'unshare', '--mount'];
  const run = asOwner(target.owner, [...ns, 'sh', '-c', script, 'ns8ctl-srv', ...argv], opts);
  return runner.run(run.argv, run.opts);
}
