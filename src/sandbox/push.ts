/**
 * `ns8ctl sandbox push IMAGE [--as NAME:TAG]`: copies an image from local Podman storage into the
 * sandbox registry with skopeo, so nodes can pull it as `<registry>/<path>:<tag>`.
 */
import { Ns8ctlError, UsageError } from '../errors.js';
import type { SandboxDeps } from './deps.js';
import { DEFAULT_SANDBOX_NAME, validateSandboxName } from './naming.js';
import { requireRoot, requireTool } from './preflight.js';
import { step } from './progress.js';
import { readRecord } from './record.js';

export interface PushOptions {
  name?: string;
  image: string;
  /** Repository path and tag in the sandbox registry (default: the image's own path and tag). */
  as?: string;
}

export interface PushResult {
  source: string;
  /** Full URL nodes pull: `10.89.1.2:5000/ns8ctl-examples/webapp:1.0.0`. */
  url: string;
}

/**
 * Pure: the path and tag an image keeps in the sandbox registry. Drops the registry host
 * (`localhost/`, `docker.io/`, `127.0.0.1:5000/`), keeps the rest; `:latest` when untagged.
 */
export function targetPath(image: string): string {
  const withoutDigest = image.split('@')[0] ?? image;
  const parts = withoutDigest.split('/');
  const first = parts[0] ?? '';
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost')) parts.shift();
  let rest = parts.join('/');
  if (!/:[^/]+$/.test(rest)) rest += ':latest';
  if (!/^[a-z0-9]+([._-][a-z0-9]+)*(\/[a-z0-9]+([._-][a-z0-9]+)*)*:[\w][\w.-]{0,127}$/.test(rest)) {
    throw new UsageError(`cannot derive a registry path from "${image}"; give one with --as NAME:TAG`);
  }
  return rest;
}

/** Copies IMAGE into the sandbox registry; fails with `image_not_found` when it is not in local storage. */
export async function pushImage(opts: PushOptions, deps: SandboxDeps): Promise<PushResult> {
  const name = validateSandboxName(opts.name ?? DEFAULT_SANDBOX_NAME);
  requireRoot(deps, 'push');
  await requireTool(deps, 'skopeo');
  const rec = await readRecord(deps, name);
  const dest = `${rec.registry}/${targetPath(opts.as ?? opts.image)}`;
  const res = await step(deps, `pushing: ${opts.image} to ${dest}`, () =>
    deps.runner.run(['skopeo', 'copy', '-q', '--dest-tls-verify=false', `containers-storage:${opts.image}`, `docker://${dest}`], { purpose: `sandbox push ${opts.image}`, mutating: true, allowFailure: true, timeoutMs: 1_800_000 }),
  );
  if (res.exitCode !== 0) {
    if (/does not resolve|not known|no such image|identifier is not an image/i.test(res.stderr)) {
      throw new Ns8ctlError('image_not_found', `image "${opts.image}" is not in local Podman storage (see podman images; build or pull it first)`);
    }
    throw new Ns8ctlError('sandbox_push_failed', `pushing ${opts.image} to the sandbox registry ${rec.registry} failed: ${res.stderr.trim().split('\n').slice(-3).join(' ')}. Is the sandbox running (ns8ctl sandbox list)?`);
  }
  return { source: opts.image, url: dest };
}
