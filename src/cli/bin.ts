#!/usr/bin/env node
import { defaultBundlePaths, loadBundle } from './code-cache.js';

const argv = process.argv.slice(2);
// The bundle with its code cache when it is built and current (src/cli/code-cache.ts), else the compiled modules.
const bundled = loadBundle(argv, process.env, defaultBundlePaths(import.meta.url));
process.exitCode = await (bundled ? bundled.entry.main(argv) : (await import('./main.js')).main(argv));
