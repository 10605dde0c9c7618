/**
 * What each CLI command loads before it does any work: the packages reached through static
 * imports from the command's code (dynamic `import()` and first-use loads inside functions are
 * not followed: they cost only the commands that reach them). Every package file loaded is
 * compiled at every start, so a static import of ioredis, ajv, yaml or the whole of semver on
 * these paths makes `--help`, `validate` or `diff` start tens of milliseconds slower
 * (docs/performance.md, bench/cli-startup.ts).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

const ROOT = path.resolve('.');

/** Static value imports and re-exports (`import type` / `export type` are erased by the compiler). */
const STATIC = /^\s*(?:import|export)\s+(?!type\b)(?:[^'";]*?\sfrom\s+)?(['"])([^'"\n]+)\1/gm;

/** The static import graph from `entries`: the source files and the package specifiers reached. */
function staticGraph(entries: string[]): { files: Set<string>; packages: Set<string> } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const queue = entries.map((e) => path.resolve(ROOT, e));
  while (queue.length > 0) {
    const file = queue.pop()!;
    if (files.has(file)) continue;
    files.add(file);
    for (const m of readFileSync(file, 'utf8').matchAll(STATIC)) {
      const spec = m[2]!;
      if (spec.startsWith('.')) queue.push(path.resolve(path.dirname(file), spec.replace(/\.js$/, '.ts')));
      else if (!spec.startsWith('node:')) packages.add(spec);
    }
  }
  return { files, packages };
}

const rel = (files: Set<string>): string[] => [...files].map((f) => path.relative(ROOT, f));

/**
 * What every command loads first: the bin, and the CLI entry it runs (from the bundle, where
 * esbuild keeps what is imported lazily lazy and what is imported statically evaluated at start,
 * or imported as compiled modules).
 */
const CLI_START = ['src/cli/bin.ts', 'src/cli/main.ts'];

describe('CLI startup: what a command loads before it runs', () => {
  test('the parser reads static imports and re-exports, not type-only imports', () => {
    const { packages } = staticGraph(['src/apply/load-validate.ts']);
    // load-validate imports ioredis for its types only.
    expect(packages.has('ioredis')).toBe(false);
    expect(packages.has('js-yaml')).toBe(true);
  });

  test('the bin loads only the bundle loader (Node built-ins) before it runs the CLI entry', () => {
    const { files, packages } = staticGraph(['src/cli/bin.ts']);
    expect([...packages]).toEqual([]);
    expect(rel(files).sort()).toEqual(['src/cli/bin.ts', 'src/cli/code-cache.ts']);
    // The CLI entry, in the bundle or as compiled modules: main.js, imported only when no bundle is current.
    expect(readFileSync(path.resolve(ROOT, 'src/cli/bin.ts'), 'utf8')).toMatch(/await import\('\.\/main\.js'\)/);
  });

  test('`ns8ctl --help` loads no package through `import` (commander is required) and no command code', () => {
    const { files, packages } = staticGraph([...CLI_START]);
    expect([...packages]).toEqual([]);
    expect(rel(files).filter((f) => f.startsWith('src/cli/commands/'))).toEqual([]);
  });

  test('`ns8ctl validate` loads no Redis client, no JSON Schema compiler, no YAML syntax tree, no process runner', () => {
    // validate.ts, the configuration check it imports when a Module has a configuration, and the connection code.
    const { packages } = staticGraph([...CLI_START, 'src/cli/commands/validate.ts', 'src/apply/configuration-check.ts', 'src/state/connect.ts']);
    // ucs2length (one file) is what the precompiled manifest schemas need of ajv at run time.
    expect([...packages].sort()).toEqual(['ajv/dist/runtime/ucs2length.js', 'js-yaml']);
  });

  test('`ns8ctl diff` and `apply` load no Redis client before they connect (apply then loads ioredis, diff does not), no YAML syntax tree, no JSON Schema compiler and only the parts of semver they use', () => {
    const { files, packages } = staticGraph([...CLI_START, 'src/cli/commands/plan-commands.ts', 'src/state/connect.ts']);
    const heavy = ['ioredis', 'yaml', 'ajv', 'ajv-formats', 'semver', 'execa', 'chokidar'];
    expect([...packages].filter((p) => heavy.includes(p) || p.startsWith('semver/'))).toEqual([]);
    expect(rel(files)).toContain('src/repository/semver-subset.ts');
    // Saved plans (encryption, re-validation) load only for `diff --out` and `apply --plan`.
    expect(rel(files)).not.toContain('src/apply/saved-plan.ts');
  });

  test('semver loads file by file through require (an `import` of its CommonJS files costs several times more on Node 20)', () => {
    const text = readFileSync(path.resolve(ROOT, 'src/repository/semver-subset.ts'), 'utf8');
    expect(staticGraph(['src/repository/semver-subset.ts']).packages.size).toBe(0);
    const required = [...text.matchAll(/requireHere\('([^']+)'\)/g)].map((m) => m[1]);
    expect(required.length).toBeGreaterThan(0);
    expect(required.every((r) => r!.startsWith('semver/') && r !== 'semver/index.js')).toBe(true);
  });

  test('`ns8ctl get` loads no package but the command-line parser: no Redis client, no repository code, no semver', () => {
    // get.ts, the repository area every `get` registers `get available` from, and the connection code.
    const { files, packages } = staticGraph([...CLI_START, 'src/cli/commands/get.ts', 'src/cli/commands/repository.ts', 'src/state/connect.ts']);
    expect([...packages]).toEqual([]);
    // The resolver (semver ranges) loads only for `-o json|yaml`, which show the updates on offer.
    expect(rel(files).filter((f) => f.startsWith('src/repository/') && f !== 'src/repository/update-text.ts')).toEqual([]);
  });

  test('commander loads through require at start (an `import` of its CommonJS files costs more on Node 20), fast-json-patch only when a change is planned', () => {
    const main = readFileSync(path.resolve(ROOT, 'src/cli/main.ts'), 'utf8');
    expect(main).toMatch(/createRequire\(import\.meta\.url\)\('commander'\)/);
    const planner = readFileSync(path.resolve(ROOT, 'src/plan/planner.ts'), 'utf8');
    expect(staticGraph(['src/plan/planner.ts']).packages.has('fast-json-patch')).toBe(false);
    // Required inside the function that makes a patch, not at module top level.
    expect(planner).toMatch(/^\s+comparePatch \?\?= \(createRequire\(import\.meta\.url\)\('fast-json-patch'\)/m);
  });

  test('the connection code loads no ioredis: get, diff and validate read through the small client, and ioredis loads only for what it does not serve', () => {
    const { files, packages } = staticGraph(['src/state/connect.ts']);
    expect(packages.has('ioredis')).toBe(false);
    expect(rel(files)).toContain('src/state/lite-redis.ts');
  });
});
