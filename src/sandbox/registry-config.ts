/**
 * Configuration of Debian's `docker-registry` (distribution v2) as ns8ctl runs it: plain HTTP on one
 * address, filesystem storage, deletes allowed (so tests and `sandbox push` can overwrite tags).
 * Shared by the sandbox registry container and the test harness's loopback registry.
 */

/** Renders `config.yml` for `docker-registry serve`. `listen` is `host:port`; `storageDir` an absolute path. */
export function renderRegistryConfig(listen: string, storageDir: string): string {
  return [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${storageDir}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: ${listen}`,
    '',
  ].join('\n');
}

/** The registry's API base that answers 200 once it serves (`GET http://ADDR/v2/`). */
export function registryProbeUrl(address: string): string {
  return `http://${address}/v2/`;
}
