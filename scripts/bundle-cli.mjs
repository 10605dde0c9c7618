#!/usr/bin/env node
/* global process, console */
/**
 * Bundles the compiled CLI (`dist/src/cli/main.js` and what it imports, statically or lazily)
 * into one script, `dist/cli-bundle/ns8ctl.js`, that `dist/src/cli/bin.js` compiles with a V8
 * code cache (src/cli/code-cache.ts). Run after `tsc -p tsconfig.build.json`:
 *
 *   node scripts/bundle-cli.mjs [--dist DIR]     (default: dist/ of this project)
 *
 * What the bundle keeps of the ES modules:
 * - lazily imported modules stay lazy: esbuild evaluates a module reached by `import()` (or by a
 *   `require` inside a function) when that runs, not at start;
 * - `import.meta.url` of a compiled module is the URL of that module's file under dist/src/,
 *   worked out from the bundle's own location at run time, so paths found from it (schemas/,
 *   runtime/, the project root) are the same as without the bundle, wherever dist/ is installed;
 * - `createRequire(import.meta.url)` becomes the bundle's `require`: the CommonJS packages loaded
 *   that way at start (commander, semver's files) are in the bundle; the ones loaded only for some
 *   work (ioredis, ajv, ajv-formats, yaml, fast-json-patch) stay outside and load from
 *   node_modules on first use, as before.
 * - `import()` of a built-in module or of a package kept outside becomes a require of it, as the
 *   namespace import() gives (a script compiled by vm.Script runs no dynamic import() without an
 *   experimental option); other modules reached by `import()` are in the bundle, where esbuild
 *   turns the import into a call.
 * The build fails when a compiled module uses `import.meta` or `createRequire` in a form this
 * script does not rewrite, when a dynamic import() is left, or when esbuild warns.
 *
 * Output: `// ns8ctl-bundle <sha256 of the body, 32 hex>` on the first line, then a function
 * expression `(function (exports, require, module, __filename, __dirname) { ... })` (ASCII only).
 * Written atomically, after tsc, so it is newer than dist/.tsbuildinfo (the bin's test for a
 * bundle that is current).
 */
import { createHash } from 'node:crypto';
import { readFile, rename, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { build } from 'esbuild';

const root = path.resolve(import.meta.dirname, '..');
const distArg = process.argv.indexOf('--dist');
const dist = distArg > 0 ? path.resolve(process.argv[distArg + 1]) : path.join(root, 'dist');
const outDir = path.join(dist, 'cli-bundle');
const outFile = path.join(outDir, 'ns8ctl.js');

/** CommonJS packages loaded only for some work: required from node_modules when first used. */
const EXTERNAL = ['ioredis', 'ajv', 'ajv-formats', 'yaml', 'fast-json-patch'];

/** Rewrites one compiled module's `import.meta.url` and `createRequire` uses (see above). */
function rewriteModule(text, relFromBundleDir) {
  let out = text.replace(/createRequire\(import\.meta\.url\)\(/g, 'require(');
  for (const m of [...out.matchAll(/^\s*const (\w+) = createRequire\(import\.meta\.url\);\s*$/gm)]) {
    out = out.replace(m[0], '');
    if (m[1] !== 'require') out = out.replace(new RegExp(`\\b${m[1]}\\(`, 'g'), 'require(');
  }
  out = out.replace(/import\.meta\.url/g, `__ns8ctlModuleUrl(${JSON.stringify(relFromBundleDir)})`);
  // A script compiled by vm.Script has no dynamic import() without an experimental Node option
  // (which prints a warning): built-in modules and the CommonJS packages kept outside are
  // required instead, as the namespace an import() gives them (`default` is module.exports).
  out = out.replace(/\bimport\((['"])([^'"]+)\1\)/g, (whole, q, id) =>
    id.startsWith('node:') || EXTERNAL.includes(id) ? `__ns8ctlImportRequired(require(${JSON.stringify(id)}))` : whole,
  );
  const left = /import\.meta|createRequire\(/.exec(out.replace(/^import \{ createRequire \} from 'node:module';$/m, ''));
  if (left) {
    console.error(`bundle-cli: ${relFromBundleDir}: '${left[0]}' in a form scripts/bundle-cli.mjs does not rewrite`);
    process.exit(1);
  }
  return out;
}

const compiledModules = {
  name: 'compiled-modules',
  setup(b) {
    // Exactly these packages stay outside (esbuild's `external` would also keep out their files
    // the bundle needs at start, such as ajv's ucs2length for the precompiled schemas).
    b.onResolve({ filter: /^[a-z@]/ }, (args) => (EXTERNAL.includes(args.path) ? { path: args.path, external: true } : undefined));
    b.onLoad({ filter: /\.js$/ }, async (args) => {
      if (!args.path.startsWith(path.join(dist, 'src') + path.sep)) return undefined;
      const rel = path.relative(outDir, args.path).split(path.sep).join('/');
      return { contents: rewriteModule(await readFile(args.path, 'utf8'), rel), loader: 'js', resolveDir: path.dirname(args.path) };
    });
  },
};

const result = await build({
  entryPoints: [path.join(dist, 'src', 'cli', 'main.js')],
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  write: false,
  outfile: outFile,
  charset: 'ascii',
  legalComments: 'none',
  minifyWhitespace: true,
  minifySyntax: true,
  plugins: [compiledModules],
  logLevel: 'silent',
});
if (result.warnings.length > 0 || result.errors.length > 0) {
  for (const w of [...result.errors, ...result.warnings]) console.error(`bundle-cli: ${w.location?.file ?? ''}:${w.location?.line ?? ''} ${w.text}`);
  process.exit(1);
}
const code = result.outputFiles.find((f) => f.path === outFile).text;
const dynamicImport = /\bimport\(/.exec(code);
if (dynamicImport) {
  console.error(`bundle-cli: the bundle still holds a dynamic import() (${JSON.stringify(code.slice(Math.max(0, dynamicImport.index - 80), dynamicImport.index + 40))}), which a vm.Script cannot run; only built-in modules are rewritten`);
  process.exit(1);
}
// Strict mode for the whole bundle (every input is an ES module), then the helper the rewritten modules call.
const helper = [
  'const __ns8ctlModuleUrl = (rel) => require("node:url").pathToFileURL(require("node:path").join(__dirname, rel)).href;',
  'const __ns8ctlImportRequired = (m) => Promise.resolve(Object.assign(Object.create(null), m, { default: m }));',
].join('\n');
const body = `(function (exports, require, module, __filename, __dirname) {\n"use strict";\n${helper}\n${code}\n})`;
const hash = createHash('sha256').update(body).digest('hex').slice(0, 32);
await mkdir(outDir, { recursive: true });
const tmp = `${outFile}.${process.pid}.tmp`;
await writeFile(tmp, `// ns8ctl-bundle ${hash}\n${body}\n`);
await rename(tmp, outFile);
