/**
 * The part of semver that version resolution uses, imported file by file: the package's index
 * loads all of its 47 files (every function and range helper) at every CLI start that reaches
 * resolution, `diff` and `apply` included; these need 21.
 */
import SemVer from 'semver/classes/semver.js';
import Range from 'semver/classes/range.js';
import eq from 'semver/functions/eq.js';
import gt from 'semver/functions/gt.js';
import gte from 'semver/functions/gte.js';
import lt from 'semver/functions/lt.js';
import lte from 'semver/functions/lte.js';
import parse from 'semver/functions/parse.js';
import rcompare from 'semver/functions/rcompare.js';
import validRange from 'semver/ranges/valid.js';

/** Same functions and classes as `import semver from 'semver'` gives, for what resolution uses. */
const semver = { SemVer, Range, eq, gt, gte, lt, lte, parse, rcompare, validRange };
export default semver;
