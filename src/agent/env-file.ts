/**
 * The NS8 state file `state/environment`: one `KEY=VALUE` per line, split at the first `=`, no
 * quoting, lines without `=` ignored. systemd reads it raw (`EnvironmentFile=`), so a value with a
 * newline (or a NUL/CR) would smuggle a second variable: such values are refused. Writes are
 * atomic (temporary file + fsync + rename) with sorted keys; read-modify-write runs under NS8's
 * `.environment.lock`.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { withFileLock } from '../host/file-lock.js';
import { AgentError } from '../errors.js';

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Parses environment file text as NS8 does (first `=` splits; lines without `=` ignored). */
export function parseEnvironment(text: string): Map<string, string> {
  const env = new Map<string, string>();
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    env.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return env;
}

/** Throws unless `name`/`value` can be stored in an environment file without changing its meaning. */
export function assertEnvEntry(name: string, value: string, where = 'environment'): void {
  if (!ENV_NAME.test(name)) {
    throw new AgentError('env_name_invalid', `${where}: variable name ${JSON.stringify(name)} is not valid: use letters, digits and "_", not starting with a digit`);
  }
  if (/[\n\r\0]/.test(value)) {
    throw new AgentError('env_value_invalid', `${where}: value of ${name} contains a newline, carriage return or NUL; the state file is read raw by systemd, so such values are refused`);
  }
}

/** Formats sorted `KEY=VALUE\n` lines; throws on an invalid name or value. */
export function formatEnvironment(env: ReadonlyMap<string, string> | Record<string, string>, where = 'environment'): string {
  const entries = env instanceof Map ? [...env.entries()] : Object.entries(env);
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  let out = '';
  for (const [k, v] of entries) {
    assertEnvEntry(k, v, where);
    out += `${k}=${v}\n`;
  }
  return out;
}

/** Reads an environment file; a missing file is an empty environment. */
export async function readEnvironmentFile(file: string): Promise<Map<string, string>> {
  try {
    return parseEnvironment(await fs.readFile(file, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
    throw new AgentError('env_read_failed', `cannot read ${file}: ${(err as Error).message}`, { cause: err, user: false });
  }
}

/**
 * Writes `env` to `file` atomically with sorted keys. The new file keeps the old file's mode
 * (0644 for a new file, as NS8's agent unit makes it). Throws on invalid entries before touching
 * the file.
 */
export async function writeEnvironmentFile(file: string, env: ReadonlyMap<string, string> | Record<string, string>): Promise<void> {
  const text = formatEnvironment(env, file);
  let mode = 0o644;
  try {
    mode = (await fs.stat(file)).mode & 0o7777;
  } catch {
    // new file: default mode
  }
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const handle = await fs.open(tmp, 'wx', mode);
  try {
    await handle.writeFile(text, 'utf8');
    await handle.chmod(mode);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await fs.rename(tmp, file);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw new AgentError('env_write_failed', `cannot replace ${file}: ${(err as Error).message}`, { cause: err, user: false });
  }
}

const locks = new Map<string, Promise<unknown>>();

/**
 * Reads, changes and writes an environment file under NS8's `.environment.lock` (an flock in the
 * same directory, taken by the node agent and by Python steps too), so concurrent tasks and
 * processes never lose each other's `set-env`. `change` mutates the map;
 * the file is rewritten even when nothing changed (normalising it).
 */
export async function updateEnvironmentFile(file: string, change: (env: Map<string, string>) => void): Promise<Map<string, string>> {
  const previous = locks.get(file) ?? Promise.resolve();
  // In-process queue first (one flock child at a time), then NS8's `.environment.lock` shared
  // with the node agent and with Python steps (`agent.set_env`).
  const run = previous.catch(() => undefined).then(() =>
    withFileLock(path.join(path.dirname(file), '.environment.lock'), async () => {
      const env = await readEnvironmentFile(file);
      change(env);
      await writeEnvironmentFile(file, env);
      return env;
    }),
  );
  locks.set(file, run);
  try {
    return await run;
  } finally {
    if (locks.get(file) === run) locks.delete(file);
  }
}
