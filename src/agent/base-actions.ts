/**
 * The base actions every module agent inherits (NS8 ships them as scripts in
 * /usr/local/agent/actions; ns8ctl ships them in TypeScript). Each step has NS8's file name, so a
 * module's own `actions/<action>/<same name>` replaces it and its other steps interleave
 * alphabetically:
 * - create-module: `05create_volumes`, `05pullimages` (service images from the input, their
 *   `<NAME>_IMAGE` variables), `10default_roles` (owner/reader roles), `10selfadm_role`;
 * - destroy-module: `50destroy` (no-op hook point), `95cleanup_images` (rootfull only);
 * - update-module: `05pullimages` (the node agent pulled, extracted and wrote IMAGE_* and
 *   PREV_* already), `50run_scriptdir` (the module's `update-module.d/` scripts, in order);
 * - get-status: `20read` (services, images, volumes).
 * get-configuration / configure-module are the module's own (a convention, see docs/module-agent.md).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { BuiltinAction, BuiltinStep, BuiltinStepContext } from './action-catalog.js';
import { BASE_ACTION_SCHEMAS } from './base-action-schemas.js';
import { formatCommandLine } from './comfd-protocol.js';
import type { ValidateFunction } from 'ajv';
import * as precompiled from './generated/base-action-validators.js';
import { instanceIdOfAgent, isSafeName } from './names.js';
import { defaultGraphroot, findImage, readImageStore } from '../host/image-store.js';
import { runStepProcess } from '../host/step-process.js';

/** Options for the base actions (paths the tests and rootfull hosts change). */
export interface BaseActionsOptions {
  /** Where rootfull instances' system units live (`/etc/systemd/system`). */
  systemUnitDir?: string;
}

/** `docker.io/library/mysql:10.3-alpine` -> `mysql` (NS8 get_image_name_from_url). */
export function imageNameFromUrl(url: string): string {
  const noScheme = url.replace(/^[a-z]+:\/\//, '');
  let last = noScheme.slice(noScheme.lastIndexOf('/') + 1);
  const at = last.indexOf('@');
  if (at >= 0) last = last.slice(0, at);
  const colon = last.indexOf(':');
  if (colon >= 0) last = last.slice(0, colon);
  return last;
}

/**
 * The seeds' rule for service image variables: image name upper-cased, symbols to `_`, `I`
 * prefix when it starts with a digit, `_IMAGE` suffix (`node-exporter` -> `NODE_EXPORTER_IMAGE`,
 * `2fauth` -> `I2FAUTH_IMAGE`).
 */
export function serviceImageEnvName(url: string): string {
  const base = imageNameFromUrl(url).replace(/[^A-Za-z0-9_]/g, '_').toUpperCase();
  return `${/^\d/.test(base) ? 'I' : ''}${base}_IMAGE`;
}



function moduleIdOf(ctx: BuiltinStepContext): string {
  return ctx.env['MODULE_ID'] || instanceIdOfAgent(ctx.agentId) || ctx.agentId;
}

const asObject = (v: unknown): Record<string, unknown> => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {});

const createVolumes: BuiltinStep = {
  name: '05create_volumes',
  async run(ctx) {
    await ctx.command('set-weight 05pullimages 5');
    const moduleId = moduleIdOf(ctx);
    const volumes = asObject(asObject(ctx.input)['volumes']);
    for (const [rawName, base] of Object.entries(volumes)) {
      const vol = rawName.replace(/^\/+|\/+$/g, '');
      if (!isSafeName(vol) || typeof base !== 'string' || !path.isAbsolute(base)) {
        ctx.err(`05create_volumes: volume ${JSON.stringify(rawName)} -> ${JSON.stringify(base)} refused: the name must be a plain name and the path absolute\n`);
        return 2;
      }
      // A volume under the install dir's own base path is the default storage: nothing to bind.
      if (path.resolve(ctx.installDir).startsWith(path.resolve(base) + path.sep)) continue;
      const volpath = path.join(base, moduleId, vol, '_data');
      await fs.mkdir(volpath, { recursive: true, mode: 0o700 });
      // NS8 runs `podman volume create --ignore`; Debian 12's podman (4.3) has no --ignore: an
      // existing volume is detected first, with the same result.
      const exists = await ctx.services.runner.run(['podman', 'volume', 'exists', vol], { allowFailure: true, purpose: `${moduleId}: create-module: check volume ${vol}`, env: { ...ctx.env } });
      if (exists.exitCode === 0) continue;
      await ctx.services.runner.run(['podman', 'volume', 'create', `--opt=device=${volpath}`, '--opt=type=bind', vol], {
        purpose: `${moduleId}: create-module: create volume ${vol}`,
        mutating: true,
        env: { ...ctx.env },
      });
    }
    return 0;
  },
};

const pullImages: BuiltinStep = {
  name: '05pullimages',
  async run(ctx) {
    const moduleId = moduleIdOf(ctx);
    const raw = asObject(ctx.input)['images'];
    const images = Array.isArray(raw) ? raw.filter((x): x is string => typeof x === 'string' && x !== '') : [];
    for (const url of images) await ctx.command(formatCommandLine(['set-env', serviceImageEnvName(url), url]));
    let done = 0;
    // The node agent has put the service images in place already: found in the storage's own
    // metadata, an image needs no podman process (each costs the user's podman start, 0.1-0.6 s).
    const graphroot = await defaultGraphroot(ctx.env, ctx.rootfull);
    const local = graphroot ? await readImageStore(graphroot) : undefined;
    for (const url of images) {
      if (ctx.signal.aborted) return 143;
      const found = local !== undefined && findImage(local, url) !== undefined;
      const exists = found ? undefined : await ctx.services.runner.run(['podman', 'image', 'exists', url], { allowFailure: true, purpose: `${moduleId}: create-module: check image ${url}`, env: { ...ctx.env } });
      if (exists && exists.exitCode !== 0) {
        await ctx.services.runner.run(['podman', 'pull', url], { purpose: `${moduleId}: create-module: pull ${url}`, mutating: true, env: { ...ctx.env } });
      }
      done++;
      await ctx.command(`set-progress ${Math.floor((done * 100) / images.length)}`);
    }
    return 0;
  },
};

const defaultRoles: BuiltinStep = {
  name: '10default_roles',
  async run(ctx) {
    const redis = ctx.services.redis;
    if (!redis) return 0;
    // NS8's cluster add-module creates these; here the agent does it with its own credentials.
    await redis.multi().sadd(`${ctx.agentId}/roles/owner`, '*').sadd(`${ctx.agentId}/roles/reader`, 'list-*', 'get-*', 'show-*', 'read-*').exec();
    return 0;
  },
};

const selfadmRole: BuiltinStep = {
  name: '10selfadm_role',
  async run(ctx) {
    const redis = ctx.services.redis;
    if (!redis) return 0;
    try {
      await fs.access(path.join(ctx.installDir, 'actions', 'configure-module'));
    } catch {
      return 0;
    }
    await redis.sadd(`${ctx.agentId}/roles/selfadm`, 'configure-module');
    return 0;
  },
};

const destroyHook: BuiltinStep = { name: '50destroy', run: () => Promise.resolve(0) };


/**
 * NS8's `05pullimages` pulls and extracts the new image and writes IMAGE_* and PREV_*; under
 * ns8ctl the node agent has done all of that before it sends update-module, so this step only
 * says so when asked for another image than the installed one (a hand-made task).
 */
const updatePulledImages: BuiltinStep = {
  name: '05pullimages',
  run(ctx) {
    const url = asObject(ctx.input)['module_url'];
    const installed = ctx.env['IMAGE_URL'] ?? '';
    if (typeof url === 'string' && url !== installed) {
      ctx.err(`05pullimages: module_url ${url} is not the installed image ${installed || '(none)'}: ns8ctl's node agent pulls and extracts images (change the Module's spec.image); running the update steps for ${installed || 'the installed image'}\n`);
    }
    return Promise.resolve(0);
  },
};

/**
 * NS8's `50run_scriptdir`: every executable file of `update-module.d/`, in name order, with the
 * step's environment (the new IMAGE_* and the PREV_* variables) and AGENT_COMFD. The first
 * script that fails ends the step with its exit code and the later scripts do not run, as in NS8
 * (its step runs them under `set -e`): the update-module task fails, which the node agent rolls
 * back when a backupFirst snapshot holds the data of before the update.
 */
const runUpdateScripts: BuiltinStep = {
  name: '50run_scriptdir',
  async run(ctx) {
    const dir = path.join(ctx.installDir, 'update-module.d');
    let names: string[];
    try {
      names = (await fs.readdir(dir)).sort();
    } catch {
      return 0;
    }
    for (const name of names) {
      if (ctx.signal.aborted) return 143;
      const file = path.join(dir, name);
      const st = await fs.stat(file).catch(() => undefined);
      if (!st?.isFile() || (st.mode & 0o111) === 0 || name.startsWith('.')) continue;
      const res = await runStepProcess({
        file,
        cwd: ctx.stateDir,
        env: { ...ctx.env, AGENT_COMFD: '3' },
        input: JSON.stringify(ctx.input ?? null),
        comfd: true,
        signal: ctx.signal,
        onStdout: (t) => ctx.err(t),
        onStderr: (t) => ctx.err(t),
        onCommandLine: (line) => void ctx.command(line),
      });
      if (res.spawnError) {
        ctx.err(`50run_scriptdir: update-module.d/${name} could not run: ${res.spawnError.message}\n`);
        return 126;
      }
      if (res.exitCode !== 0) {
        ctx.err(`50run_scriptdir: update-module.d/${name} failed with exit code ${res.exitCode ?? 'by signal'}; the later scripts do not run\n`);
        return res.exitCode ?? 1;
      }
    }
    return 0;
  },
};

const cleanupImages: BuiltinStep = {
  name: '95cleanup_images',
  async run(ctx) {
    if (!ctx.rootfull) return 0; // rootless images go with the user
    const images = Object.entries(ctx.env)
      .filter(([k, v]) => (k === 'IMAGE_ID' || (k.endsWith('_IMAGE') && !k.startsWith('PREV_'))) && v !== '')
      .map(([, v]) => v);
    if (images.length === 0) return 0;
    const rec = await ctx.services.runner.run(['podman', 'rmi', '--ignore', ...images], { allowFailure: true, purpose: `${moduleIdOf(ctx)}: destroy-module: remove images`, mutating: true, env: { ...ctx.env } });
    if (rec.exitCode !== 0) ctx.err(`95cleanup_images: podman rmi failed (ignored): ${rec.stderr.trim()}\n`);
    return 0;
  },
};

async function listUnits(ctx: BuiltinStepContext, systemUnitDir: string): Promise<string[]> {
  const moduleId = moduleIdOf(ctx);
  const names = async (dir: string): Promise<string[]> => {
    try {
      return (await fs.readdir(dir)).sort();
    } catch {
      return [];
    }
  };
  if (ctx.rootfull) return (await names(systemUnitDir)).filter((f) => f.startsWith(moduleId) && f.endsWith('.service'));
  const userDir = path.join(ctx.installDir, 'systemd', 'user');
  const wants = await names(path.join(userDir, 'default.target.wants'));
  const units: string[] = [];
  for (const f of await names(userDir)) {
    if (!f.endsWith('.service')) continue;
    if (f.endsWith('@.service')) {
      const prefix = f.slice(0, -'.service'.length);
      units.push(...wants.filter((w) => w.startsWith(prefix) && w.endsWith('.service')));
    } else units.push(f);
  }
  return units;
}

function splitCsvLines(text: string, fields: number): string[][] {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      const parts = l.split(',');
      // the last field (a date) never has commas; a name could: keep extra commas in the first field
      while (parts.length > fields) parts.splice(0, 2, `${parts[0]},${parts[1]}`);
      return parts;
    });
}

function getStatusStep(opts: BaseActionsOptions): BuiltinStep {
  return {
    name: '20read',
    async run(ctx) {
      const moduleId = moduleIdOf(ctx);
      const node = ctx.env['NODE_ID'] ?? '';
      const redis = ctx.services.redis;
      const [uiName, nodeUiName] = redis ? await Promise.all([redis.get(`module/${moduleId}/ui_name`), redis.get(`node/${node}/ui_name`)]) : [null, null];
      const units = await listUnits(ctx, opts.systemUnitDir ?? '/etc/systemd/system');
      const services = ctx.services.systemd ? await ctx.services.systemd.serviceStatus(units, ctx.rootfull ? 'system' : 'user') : units.map((u) => ({ name: u.replace(/\.service$/, ''), active: false, enabled: false, failed: false }));
      const filter = new Set(Object.entries(ctx.env).filter(([k]) => k.endsWith('_IMAGE')).map(([, v]) => v));
      const imgRec = await ctx.services.runner.run(['podman', 'image', 'list', '--format', '{{index .Names 0}},{{.Size}},{{.CreatedAt}}'], { allowFailure: true, purpose: `${moduleId}: get-status: list images`, env: { ...ctx.env } });
      const images = (imgRec.exitCode === 0 ? splitCsvLines(imgRec.stdout, 3) : [])
        .filter(([name]) => !ctx.rootfull || filter.has(name ?? ''))
        .map(([name, size, created]) => ({ name: name ?? '', size: size ?? '', created: created ?? '' }));
      const volRec = await ctx.services.runner.run(['podman', 'volume', 'ls', '--format', '{{.Name}},{{.Mountpoint}},{{.CreatedAt}}'], { allowFailure: true, purpose: `${moduleId}: get-status: list volumes`, env: { ...ctx.env } });
      const volumes = (volRec.exitCode === 0 ? splitCsvLines(volRec.stdout, 3) : [])
        .filter(([name]) => !ctx.rootfull || (name ?? '').startsWith(moduleId))
        .map(([name, mount, created]) => ({ name: name ?? '', mount: mount ?? '', created: created ?? '' }));
      ctx.out(JSON.stringify({ instance: moduleId, ui_name: uiName ?? '', node, node_ui_name: nodeUiName ?? '', services, images, volumes }));
      return 0;
    },
  };
}

/** A validator of the generated module (standalone functions report `errors` as a compiled one does). */
function validatorOf(name: keyof typeof precompiled): ValidateFunction {
  return precompiled[name] as unknown as ValidateFunction;
}

/** The base actions, ready to pass to runAgent (`builtins`). */
export function createBaseActions(opts: BaseActionsOptions = {}): BuiltinAction[] {
  return [
    { name: 'create-module', steps: [createVolumes, pullImages, defaultRoles, selfadmRole], inputSchema: BASE_ACTION_SCHEMAS.createModuleInput, inputValidate: validatorOf('CreateModuleInput') },
    { name: 'destroy-module', steps: [destroyHook, cleanupImages] },
    { name: 'update-module', steps: [updatePulledImages, runUpdateScripts], inputSchema: BASE_ACTION_SCHEMAS.updateModuleInput, inputValidate: validatorOf('UpdateModuleInput') },
    { name: 'get-status', steps: [getStatusStep(opts)], outputSchema: BASE_ACTION_SCHEMAS.getStatusOutput, outputValidate: validatorOf('GetStatusOutput') },
  ];
}
