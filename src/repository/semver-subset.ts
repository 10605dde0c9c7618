/**
 * The part of semver that version resolution uses, loaded file by file: the package's index
 * loads all of its 47 files (every function and range helper) at every CLI start that reaches
 * resolution, `diff` and `apply` included; these need 21. They are loaded with `require`, not
 * `import`: semver is CommonJS, and on Node 20 each CommonJS file an ES module imports (and each
 * file those require) goes through the ES module loader, which made these 21 files cost about
 * four times their `require` (measured: ~80-110 ms of CPU against ~20-30 ms). `require` gives
 * the very module instances an `import` would.
 */
import { createRequire } from 'node:module';
import type SemVerClass from 'semver/classes/semver.js';
import type RangeClass from 'semver/classes/range.js';
import type eqFunction from 'semver/functions/eq.js';
import type gtFunction from 'semver/functions/gt.js';
import type gteFunction from 'semver/functions/gte.js';
import type ltFunction from 'semver/functions/lt.js';
import type lteFunction from 'semver/functions/lte.js';
import type parseFunction from 'semver/functions/parse.js';
import type rcompareFunction from 'semver/functions/rcompare.js';
import type validRangeFunction from 'semver/ranges/valid.js';

const requireHere = createRequire(import.meta.url);

/** Same functions and classes as `import semver from 'semver'` gives, for what resolution uses. */
const semver = {
  SemVer: requireHere('semver/classes/semver.js') as typeof SemVerClass,
  Range: requireHere('semver/classes/range.js') as typeof RangeClass,
  eq: requireHere('semver/functions/eq.js') as typeof eqFunction,
  gt: requireHere('semver/functions/gt.js') as typeof gtFunction,
  gte: requireHere('semver/functions/gte.js') as typeof gteFunction,
  lt: requireHere('semver/functions/lt.js') as typeof ltFunction,
  lte: requireHere('semver/functions/lte.js') as typeof lteFunction,
  parse: requireHere('semver/functions/parse.js') as typeof parseFunction,
  rcompare: requireHere('semver/functions/rcompare.js') as typeof rcompareFunction,
  validRange: requireHere('semver/ranges/valid.js') as typeof validRangeFunction,
};
export default semver;
