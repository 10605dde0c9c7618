/**
 * Declarative configuration of one Module, the controller's part: once the node agent reports the
 * instance Ready at the desired generation, run configure-module with `spec.configuration` when it
 * differs from what configure-module last accepted (sha256 kept in
 * `ns8ctl/configuration/module/<id>`); on a drift check, run get-configuration, compare
 * (diffConfiguration with the configure-module schema) and report the field diff, healing it only
 * when the object's source has self-heal on. Secrets never reach Redis, events or conditions.
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { diffConfiguration, formatConfigurationDiff } from '../agent/configuration.js';
import { applyConfiguration, readConfiguration } from '../agent/configuration-tasks.js';
import { TaskFailedError } from '../agent/errors.js';
import { toNs8ctlError } from '../errors.js';
import { canonicalJson } from '../plan/canonical.js';
import { isSecretKey, MASK, maskString } from '../plan/mask.js';
import { keys } from '../state/keys.js';
import type { ConfigurationSchemaLookup } from './configuration-schema.js';
import type { EventRecorder } from './events.js';

/** What the configuration step tells the Module summary (conditions.ts). */
export interface ConfigurationFacts {
  /** configure-module refused this configuration at this generation (masked agent output). */
  failed?: string;
  /** configure-module could not be run yet (no agent answered); retried with backoff. */
  pending?: string;
  /** Field diff between spec.configuration and get-configuration (masked), when not healed. */
  drift?: string[];
}

/** The stored record (`ns8ctl/configuration/module/<id>`), parsed. */
export interface ConfigurationRecord {
  appliedHash: string;
  appliedGeneration: number;
  appliedTime: string;
  appliedTask: string;
  failedHash: string;
  failedGeneration: number;
  failedMessage: string;
  drift: string[];
  driftCheckedTime: string;
}

export interface ConfigurationReconcileDeps {
  redis: Redis;
  events: EventRecorder;
  now: () => Date;
  /** configure-module schemas for normalising get-configuration output (defaults filled in). */
  schemas?: ConfigurationSchemaLookup;
  /** Whether the source named by an object's apply set heals drift (objects of no controller source: false). */
  selfHeal: (applySet: string) => boolean;
  /** Run get-configuration when the last check is at least this old (default 10 min; 0: every reconcile). */
  driftCheckEveryMs?: number;
  /** Give up waiting for a task after this long (default 120 s); the reconcile is retried with backoff. */
  taskTimeoutMs?: number;
}

/** What to reconcile. */
export interface ConfigurationInput {
  id: string;
  generation: number;
  applySet: string;
  /** `spec.configuration`; undefined: nothing to configure (the record is forgotten). */
  configuration: Record<string, unknown> | undefined;
  /** The node agent reports the instance Ready at `generation`, not suspended, not being removed. */
  ready: boolean;
  /** Image installed now (for finding the schema in the install dir). */
  installedImage?: string | undefined;
}

/** sha256 of the canonical JSON of a configuration: equal content, equal hash. */
export function configurationHash(config: unknown): string {
  return createHash('sha256').update(canonicalJson(config ?? {})).digest('hex');
}

/** Parses the stored record; missing fields are empty. */
export function parseConfigurationRecord(h: Record<string, string>): ConfigurationRecord {
  let drift: string[] = [];
  try {
    drift = h.drift ? (JSON.parse(h.drift) as string[]) : [];
  } catch {
    drift = [];
  }
  return {
    appliedHash: h.appliedHash ?? '',
    appliedGeneration: Number(h.appliedGeneration ?? 0),
    appliedTime: h.appliedTime ?? '',
    appliedTask: h.appliedTask ?? '',
    failedHash: h.failedHash ?? '',
    failedGeneration: Number(h.failedGeneration ?? 0),
    failedMessage: h.failedMessage ?? '',
    drift,
    driftCheckedTime: h.driftCheckedTime ?? '',
  };
}

/** Every string value under a secret-looking key, at any depth. */
function secretValues(value: unknown, secret = false, out: string[] = []): string[] {
  if (typeof value === 'string' || typeof value === 'number') {
    if (secret && String(value).length > 0) out.push(String(value));
  } else if (Array.isArray(value)) value.forEach((v) => secretValues(v, secret, out));
  else if (value && typeof value === 'object') for (const [k, v] of Object.entries(value)) secretValues(v, secret || isSecretKey(k), out);
  return out;
}

/**
 * Masks text an agent produced (error output, validation output) for a configuration: every
 * secret value of `configuration` (plain or JSON-escaped) and URL passwords become MASK.
 */
export function maskAgentText(text: string, configuration: unknown): string {
  let out = text;
  for (const v of secretValues(configuration).sort((a, b) => b.length - a.length)) {
    for (const form of new Set([v, JSON.stringify(v).slice(1, -1)])) out = out.split(form).join(MASK);
  }
  return maskString(out);
}

/** A one-paragraph description of a refused configure-module (exit code, output, last stderr lines), masked. */
export function describeTaskFailure(err: TaskFailedError, configuration: unknown): string {
  const parts = [err.message];
  if (err.output.trim()) parts.push(`output: ${err.output.trim().slice(0, 500)}`);
  return maskAgentText(parts.join('; '), configuration);
}

/**
 * One configuration reconcile (see the module doc). Returns the facts for the summary, and
 * `retry` when a task could not be run (no agent answered): the caller writes the summary, then
 * throws it for the work queue's backoff. @throws RedisError when Redis fails.
 */
export async function reconcileConfiguration(input: ConfigurationInput, deps: ConfigurationReconcileDeps): Promise<{ facts: ConfigurationFacts | undefined; retry?: Error }> {
  const { redis, events } = deps;
  const key = keys.moduleConfiguration(input.id);
  const object = `Module/${input.id}`;
  if (input.configuration === undefined) {
    await redis.del(key);
    return { facts: undefined };
  }
  const rec = parseConfigurationRecord(await redis.hgetall(key));
  const hash = configurationHash(input.configuration);
  const failedNow = rec.failedHash === hash && rec.failedGeneration === input.generation;
  if (!input.ready) return { facts: failedNow ? { failed: rec.failedMessage } : undefined };
  const timeoutMs = deps.taskTimeoutMs ?? 120_000;
  const now = deps.now();

  const configure = async (why: 'changed' | 'drift'): Promise<{ facts: ConfigurationFacts; retry?: Error } | undefined> => {
    try {
      const r = await applyConfiguration(redis, input.id, input.configuration, { timeoutMs, pollMs: 500 });
      await redis
        .multi()
        .hset(key, { appliedHash: hash, appliedGeneration: String(input.generation), appliedTime: now.toISOString(), appliedTask: r.taskId, drift: '[]', driftCheckedTime: now.toISOString() })
        .hdel(key, 'failedHash', 'failedGeneration', 'failedMessage')
        .exec();
      if (why === 'changed') {
        await events.record({ name: 'module-configured', type: 'Normal', object, message: `${input.id}: configure-module applied spec.configuration (generation ${input.generation}, task ${r.taskId})`, data: { module: input.id, generation: input.generation, task: r.taskId } });
      }
      return undefined;
    } catch (err) {
      if (err instanceof TaskFailedError) {
        const message = describeTaskFailure(err, input.configuration);
        await redis.hset(key, { failedHash: hash, failedGeneration: String(input.generation), failedMessage: message });
        await events.record({ name: 'module-configuration-failed', type: 'Warning', object, message: `${input.id}: ${message}`, data: { module: input.id, generation: input.generation, task: err.taskId, exitCode: err.exitCode } });
        return { facts: { failed: message } };
      }
      const e = toNs8ctlError(err);
      return { facts: { pending: maskAgentText(`configure-module of ${input.id} could not run: ${e.message}`, input.configuration) }, retry: e };
    }
  };

  if (rec.appliedHash !== hash) {
    if (failedNow) return { facts: { failed: rec.failedMessage } };
    const res = await configure('changed');
    if (res) return res;
    return { facts: {} };
  }

  // Applied: check drift when due.
  const every = deps.driftCheckEveryMs ?? 600_000;
  const last = rec.driftCheckedTime ? Date.parse(rec.driftCheckedTime) : 0;
  if (now.getTime() - last < every) return { facts: rec.drift.length ? { drift: rec.drift } : {} };
  let actual: unknown;
  try {
    actual = await readConfiguration(redis, input.id, { timeoutMs, pollMs: 500 });
  } catch (err) {
    // A module without get-configuration (or one that fails) cannot drift-check: remember the
    // attempt so it is not retried before the next check is due.
    await redis.hset(key, { driftCheckedTime: now.toISOString() });
    if (err instanceof TaskFailedError) return { facts: rec.drift.length ? { drift: rec.drift } : {} };
    return { facts: rec.drift.length ? { drift: rec.drift } : {}, retry: toNs8ctlError(err) };
  }
  const schema = (await deps.schemas?.find({ id: input.id, installedImage: input.installedImage }).catch(() => undefined))?.schema;
  const diff = diffConfiguration(input.configuration, actual, schema !== undefined ? { schema } : {});
  const lines = formatConfigurationDiff(diff).map((l) => maskAgentText(l, input.configuration));
  if (diff.equal) {
    await redis.hset(key, { drift: '[]', driftCheckedTime: now.toISOString() });
    return { facts: {} };
  }
  if (deps.selfHeal(input.applySet)) {
    const res = await configure('drift');
    if (res) return res;
    await events.record({ name: 'module-configuration-drift-corrected', type: 'Warning', object, message: `${input.id}: live configuration differed from spec.configuration; configure-module ran again: ${lines.join('; ')}`, data: { module: input.id, changes: lines } });
    return { facts: {} };
  }
  await redis.hset(key, { drift: JSON.stringify(lines), driftCheckedTime: now.toISOString() });
  if (JSON.stringify(lines) !== JSON.stringify(rec.drift)) {
    await events.record({ name: 'module-configuration-drifted', type: 'Warning', object, message: `${input.id}: live configuration differs from spec.configuration (self-heal is off): ${lines.join('; ')}`, data: { module: input.id, changes: lines } });
  }
  return { facts: { drift: lines } };
}
