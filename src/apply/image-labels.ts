/**
 * Offline lookup of a container image's labels, for plan-time checks of Modules that name a full
 * image URL (`spec.image`): `org.nethserver.max-per-node` is a label of the image, and such a
 * Module has no repository metadata to read it from. Like the configuration schema lookup
 * (src/configuration/configuration-schema.ts) it never contacts a registry: it reads root's local
 * container storage with `podman image inspect`.
 */
import type { CommandRunner } from '../host/runner.js';

/** Finds an image's labels; an injectable seam (tests, `false` in ResolveOptions to skip). */
export interface ImageLabelLookup {
  /**
   * The labels of `image` (a full URL with tag or digest), or undefined when they cannot be
   * found offline. Never throws for a missing image or a missing podman.
   */
  labels(image: string): Promise<Record<string, string> | undefined>;
}

/** `podman image inspect` against root's local storage (what the node agent pulled on this host). */
export class LocalImageLabels implements ImageLabelLookup {
  constructor(private readonly runner: CommandRunner) {}

  async labels(image: string): Promise<Record<string, string> | undefined> {
    const res = await this.runner.run(['podman', 'image', 'inspect', '--format', 'json', image], {
      allowFailure: true,
      purpose: `read the labels of ${image} from local image storage`,
      timeoutMs: 60_000,
    });
    if (res.exitCode !== 0) return undefined;
    try {
      const [img] = JSON.parse(res.stdout || '[]') as { Labels?: Record<string, string> | null; Config?: { Labels?: Record<string, string> | null } }[];
      if (!img) return undefined;
      return img.Labels ?? img.Config?.Labels ?? {};
    } catch {
      return undefined;
    }
  }
}

/**
 * Labels of each image in `images` (looked up once each, in order, one at a time: at most a few
 * podman calls per plan), keyed by image; images whose labels were not found are left out.
 */
export async function lookupImageLabels(lookup: ImageLabelLookup, images: Iterable<string>): Promise<Map<string, Record<string, string>>> {
  const out = new Map<string, Record<string, string>>();
  for (const image of new Set(images)) {
    const labels = await lookup.labels(image);
    if (labels) out.set(image, labels);
  }
  return out;
}
