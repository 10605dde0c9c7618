/**
 * The "core version" that `org.nethserver.min-core` labels are compared against. In NS8 it is the
 * tag of CORE_IMAGE in the leader's /etc/nethserver/core.env; ns8ctl replaces that core, so by
 * default it reports the NS8 core version whose behaviour it implements.
 */
import { readFile } from 'node:fs/promises';
import { parseImageUrl } from './resolve.js';

/** NS8 core version ns8ctl is compatible with (reference: ns8-core 3.21.x). */
export const DEFAULT_CORE_VERSION = '3.21.0';

/** Environment variable that overrides the core version (e.g. to test min-core). */
export const CORE_VERSION_ENV = 'NS8CTL_CORE_VERSION';

/** NS8's core environment file, present on a host that runs a real NS8 core. */
export const NS8_CORE_ENV_FILE = '/etc/nethserver/core.env';

/**
 * Core version to use, first found of: `NS8CTL_CORE_VERSION` in `env`; the CORE_IMAGE tag of
 * `coreEnvFile` (a real NS8 leader); DEFAULT_CORE_VERSION. Never throws: an unreadable file is
 * skipped. The value is not validated here (resolution counts an unparsable one as 999.0.0, as NS8).
 */
export async function readCoreVersion(opts: { env?: Record<string, string | undefined>; coreEnvFile?: string } = {}): Promise<string> {
  const env = opts.env ?? process.env;
  const fromEnv = env[CORE_VERSION_ENV]?.trim();
  if (fromEnv) return fromEnv;
  try {
    const text = await readFile(opts.coreEnvFile ?? NS8_CORE_ENV_FILE, 'utf8');
    const line = text.split('\n').find((l) => l.startsWith('CORE_IMAGE='));
    const tag = line ? parseImageUrl(line.slice('CORE_IMAGE='.length).trim()).tag : undefined;
    if (tag) return tag;
  } catch {
    // Not an NS8 host: fall through to the default.
  }
  return DEFAULT_CORE_VERSION;
}
