/**
 * The string half of ns8ctl's secret rules (see src/runtime/mask.ts for the whole set and
 * docs/security.md): the name rule (isSecretKey) and the masking of URL passwords and secret-named
 * parameters in free text. It has no imports, so anything (the Redis connection code too) can mask
 * the URLs it names in errors with the same rule plans and `get` use.
 */

/** What a secret value is replaced with in everything ns8ctl prints. */
export const MASK = '(sensitive value)';

/** NS8's rule (agent task context), plus the short forms: a key ending in one of these. */
const SUFFIX = /(password|passwd|secret|token|key|pass|pwd|pw)$/i;
/** Anywhere in the key name. */
const CONTAINS = /(password|passwd|passphrase|secret|token|apikey|api_key|credential|private_?key)/i;
/** As a whole word of a snake/kebab/camel-case name (`ssh_key_file`, `keyData`, `db-pwd`, `pw_hash`). */
const WORDS = new Set(['key', 'keys', 'pass', 'pwd', 'pw', 'psk', 'creds', 'cred', 'auth']);

/**
 * True when a value stored under key `name` must not be shown. The name rule: the name ends in
 * password, passwd, secret, token, key, pass, pwd or pw (NS8's agent rule plus the short forms:
 * `db_pw`, `dbPwd`); or contains password, passwd, passphrase, secret, token, apikey, api_key,
 * credential, private(_)key; or has a word key, keys, pass, pwd, pw, psk, cred, creds, auth.
 * All case-insensitive. Errs on the side of masking.
 */
export function isSecretKey(name: string): boolean {
  if (SUFFIX.test(name) || CONTAINS.test(name)) return true;
  const words = name
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .toLowerCase()
    .split(/[^a-z0-9]+/);
  return words.some((w) => WORDS.has(w));
}

/**
 * URL userinfo: the authority runs to the first `/`, `?`, `#` or space, so the greedy match ends
 * at its LAST `@` and a password holding `@` (`alice:p@ss@host`) is masked whole. The scheme is
 * optional: libraries quote a URL they failed on as `//user:pw@host/`.
 */
const URL_USERINFO = /((?:\b[a-z][a-z0-9+.-]*:)?\/\/)([^\s/?#@:]*):([^\s/?#]*)@/gi;
/** `?name=value`, `&name=value`, `;name=value` and `NAME=value` at a word start. */
const PARAMETER = /(^|[\s?&;,("'])([A-Za-z_][A-Za-z0-9_.-]*)=([^\s&;#,)"']*)/g;

/**
 * Masks secrets inside a free string: URL passwords (`https://u:(sensitive value)@host/`, the
 * whole password even when it holds `@`) and the values of secret-named parameters
 * (`redis://h/0?password=(sensitive value)`, `ADMIN_PASSWORD=(sensitive value)`).
 */
export function maskString(s: string): string {
  return maskStringWith(s, MASK);
}

/** maskString with another replacement text (NS8's `XXX` for task contexts). */
export function maskStringWith(s: string, mask: string): string {
  return s
    .replace(URL_USERINFO, (_m, scheme: string, user: string) => `${scheme}${user}:${mask}@`)
    .replace(PARAMETER, (m, lead: string, name: string, value: string, at: number, whole: string) => {
      // Already masked (the mask may hold a space, which ends the value match): keep, so masking twice is masking once.
      const masked = whole.startsWith(mask, at + lead.length + name.length + 1);
      return value !== '' && !masked && isSecretKey(name) ? `${lead}${name}=${mask}` : m;
    });
}

/**
 * Masks a URL for messages (its password and secret query parameters); same rule as maskString:
 * `redis://alice:p@ss@host` shows `redis://alice:(sensitive value)@host`.
 */
export function maskUrl(url: string): string {
  return maskString(url);
}
