/**
 * One lock for every test that builds images into the host's podman storage, pushes them and
 * removes them. Images of identical content (FROM scratch with busybox) get the same id under
 * different names, so one file's `podman rmi` of its names could remove the image another file
 * had just built and was about to push ("reading image ...: image not known"): builds, pushes and
 * removals run one at a time across the jest workers.
 */
import { tmpdir } from 'node:os';
import path from 'node:path';
import { withFileLock } from '../../src/host/file-lock.js';

const LOCK = path.join(tmpdir(), 'ns8ctl-test-image-builds.lock');

/** Runs `fn` holding the image-build lock (waits up to 15 minutes for it). */
export function withImageBuildLock<T>(fn: () => Promise<T>): Promise<T> {
  return withFileLock(LOCK, fn, { timeoutMs: 15 * 60_000 });
}
