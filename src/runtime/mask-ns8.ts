/**
 * NS8 hides secrets in stored task contexts by replacing their values with the string `XXX`.
 * The rule that decides what is secret lives in src/runtime/mask.ts (one rule set for the whole
 * program); this module gives the module agent NS8's replacement text.
 */
import { NS8_MASK, isSecretKey, maskSecrets as maskWith, maskTaskJson } from './mask.js';

/** The replacement value NS8 uses. */
export const MASK = NS8_MASK;

export { isSecretKey, maskTaskJson };

/** Returns a deep copy of `value` with every secret value replaced by `XXX` (src/runtime/mask.ts rules). */
export function maskSecrets<T>(value: T, secretNames?: ReadonlySet<string>): T {
  return maskWith(value, { mask: NS8_MASK, ...(secretNames ? { secretNames } : {}) });
}
