import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/**
 * Writes `n` Module manifests (full image URLs, a configuration each, 100 per sub-directory) and
 * 3 Nodes into `dir`: the benchmark set of the core bench and of the CLI startup bench.
 */
export function writeBenchManifests(dir: string, n: number): void {
  mkdirSync(dir, { recursive: true });
  const nodes = [1, 2, 3];
  writeFileSync(path.join(dir, 'nodes.yaml'), nodes.map((i) => `apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: {name: node${i}}\nspec: {id: ${i}}\n`).join('---\n'));
  for (let i = 1; i <= n; i++) {
    const sub = path.join(dir, `batch${Math.floor(i / 100)}`);
    mkdirSync(sub, { recursive: true });
    writeFileSync(path.join(sub, `webapp${i}.yaml`), `apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata:
  name: webapp${i}
  labels: {team: t${i % 7}}
spec:
  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.${i % 3}.0
  node: ${(i % 3) + 1}
  volumes: {data: /srv/disk${i % 2}}
  configuration:
    title: "Wiki ${i}"
    admin_password: "secret-${i}"
    features: [a, b, c]
`);
  }
}
