/**
 * The variables the node agent owns in an instance's `state/environment` (seeds, "Agent
 * environment"; ns8-core-facts §1 step 7 and §2): identity, image, service images and ports.
 * Other variables in the file belong to the module's own actions and are kept as they are.
 */
import { imageEnvName } from './image-env-name.js';
import { portEnvironment, type PortRange } from './ports.js';

export interface ManagedEnvInput {
  id: string;
  node: number;
  uuid: string;
  image: { url: string; id: string; digest: string; repoDigest: string };
  serviceImages: string[];
  ports: { tcp?: PortRange | undefined; udp?: PortRange | undefined };
}

/**
 * MODULE_ID, NODE_ID, MODULE_UUID, IMAGE_ID, IMAGE_URL, IMAGE_DIGEST, IMAGE_REPODIGEST (and NS8's
 * misspelt IMAGE_REOPODIGEST, which real modules read), `<NAME>_IMAGE` per service image, and the
 * TCP_/UDP_ port variables.
 */
export function managedEnvironment(i: ManagedEnvInput): Record<string, string> {
  const env: Record<string, string> = {
    MODULE_ID: i.id,
    NODE_ID: String(i.node),
    MODULE_UUID: i.uuid,
    IMAGE_ID: i.image.id,
    IMAGE_URL: i.image.url,
    IMAGE_DIGEST: i.image.digest,
    IMAGE_REPODIGEST: i.image.repoDigest,
    IMAGE_REOPODIGEST: i.image.repoDigest,
  };
  for (const url of i.serviceImages) env[imageEnvName(url)] = url;
  return { ...env, ...portEnvironment('tcp', i.ports.tcp), ...portEnvironment('udp', i.ports.udp) };
}

/**
 * The file content the agent wants: the observed file with the managed variables set, and the
 * variables it managed before (`previous`) but no longer wants removed. Variables the module's
 * actions wrote are kept.
 */
export function mergeEnvironment(observed: Record<string, string> | undefined, managed: Record<string, string>, previous: readonly string[]): Record<string, string> {
  const out: Record<string, string> = { ...(observed ?? {}) };
  for (const name of previous) if (!(name in managed)) delete out[name];
  return { ...out, ...managed };
}
