/** Manifest texts the CLI tests write: Nodes and a minimal Module. */

/** Node manifests for ids `ids` (`node<id>`), as one multi-document text. */
export function nodeManifests(ids: readonly number[]): string {
  return ids.map((id) => `apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata:\n  name: node${id}\nspec:\n  id: ${id}\n`).join('---\n');
}

/** A Module manifest with only an image and a node. */
export function moduleManifest(name: string, node: number, image: string): string {
  return `apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata:
  name: ${name}
spec:
  image: ${image}
  node: ${node}
`;
}
