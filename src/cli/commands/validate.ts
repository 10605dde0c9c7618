import { loadAndValidate } from '../../apply/load-validate.js';
import { ManifestError } from '../../errors.js';
import type { CliDeps } from '../deps.js';
import { parseOutput, renderJson } from '../../runtime/output.js';

export interface ValidateOptions {
  filename: string[];
  output?: string;
  offline?: boolean;
}

/**
 * `ns8ctl validate -f PATH`: schemas and cross-document checks. Node records are read from Redis
 * when one is configured or answers locally (never starts the embedded one); `--offline` skips it.
 * Exit 0 when valid, 1 with every problem listed.
 */
export async function validateCommand(opts: ValidateOptions, deps: CliDeps): Promise<number> {
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  let redis;
  if (!opts.offline) {
    try {
      redis = (await deps.connect({ startEmbedded: false, lite: true })).redis;
    } catch (err) {
      if (deps.env.NS8CTL_REDIS_URL) throw err;
      deps.stderr(`note: no Redis reachable; checked without cluster facts (${(err as Error).message})\n`);
    }
  }
  try {
    const { desired, loaded } = await loadAndValidate(opts.filename, redis, { stdin: deps.stdin });
    // The same configuration check diff runs (configure-module schemas found offline); its code,
    // with the JSON Schema compiler, loads only when a Module has a configuration.
    const configuration = await import('../../apply/configuration-check.js');
    if (configuration.hasConfigurations(desired)) {
      const check = await configuration.checkDesiredConfigurations(desired, redis);
      for (const w of check.warnings) deps.stderr(`warning: ${w}\n`);
      if (check.diagnostics.length) throw new ManifestError(check.diagnostics);
    }
    if (format === 'json') deps.stdout(renderJson({ valid: true, files: loaded.files, objects: desired.map((d) => `${d.object.kind}/${d.object.kind === 'Node' ? d.object.spec.id : d.object.metadata.name}`) }));
    else deps.stdout(`${desired.length} object${desired.length === 1 ? '' : 's'} in ${loaded.files.length} file${loaded.files.length === 1 ? '' : 's'}: valid\n`);
    return 0;
  } catch (err) {
    if (!(err instanceof ManifestError)) throw err;
    if (format === 'json') deps.stdout(renderJson({ valid: false, diagnostics: err.diagnostics }));
    else deps.stderr(err.message + '\n');
    return 1;
  }
}
