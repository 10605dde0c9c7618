import { describe, expect, it } from '@jest/globals';
import { MASK, isSecretKey, maskSecrets, maskString } from '../../src/runtime/mask.js';

describe('isSecretKey', () => {
  it.each(['password', 'ADMIN_PASSWORD', 'dbPass', 'smtp_pass', 'client_secret', 'secrets', 'apiToken', 'tokens', 'key', 'ssh_key', 'sshKey', 'ssh_key_file', 'keyData', 'apikey', 'API_KEY_ID', 'passwd', 'passphrase', 'credentials', 'aws-credential', 'privateKey', 'db-pwd', 'wifi_psk'])(
    'treats %s as secret',
    (name) => expect(isSecretKey(name)).toBe(true),
  );

  it.each(['user', 'username', 'host', 'keycloak_url', 'passage', 'monkeys', 'title', 'node', 'version', 'volumes', 'url'])('treats %s as not secret', (name) =>
    expect(isSecretKey(name)).toBe(false),
  );

  it('agrees with NS8 on every name ending in password/secret/token/key/pass, in any case', () => {
    for (const suffix of ['password', 'secret', 'token', 'key', 'pass']) {
      for (const name of [`x${suffix}`, `X${suffix.toUpperCase()}`, `my_${suffix}`]) expect(isSecretKey(name)).toBe(true);
    }
  });
});

describe('maskSecrets', () => {
  it('replaces whole values under secret keys at any depth, including objects and arrays, and copies the rest', () => {
    const input = { user: 'u', password: 'p', nested: { list: [{ token: 't', n: 1 }], credentials: { user: 'x' } }, keys: ['a'], none: null };
    const out = maskSecrets(input);
    expect(out).toEqual({ user: 'u', password: MASK, nested: { list: [{ token: MASK, n: 1 }], credentials: MASK }, keys: MASK, none: null });
    expect(input.password).toBe('p');
  });

  it('masks passwords inside URLs wherever a string appears', () => {
    expect(maskSecrets(['https://bob:hunter2@h.example/x', 'https://h.example/', 'redis://:pw@127.0.0.1:6379'])).toEqual([
      `https://bob:${MASK}@h.example/x`,
      'https://h.example/',
      `redis://:${MASK}@127.0.0.1:6379`,
    ]);
    expect(maskString('see git+ssh://git:s3cret@host/repo and http://a@b/')).toBe(`see git+ssh://git:${MASK}@host/repo and http://a@b/`);
  });

  it('keeps a __proto__ key as plain data and masks under it', () => {
    const input = JSON.parse('{"__proto__": {"token": "t", "n": 1}}') as Record<string, unknown>;
    const out = maskSecrets(input);
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(JSON.stringify(out)).toBe(`{"__proto__":{"token":"${MASK}","n":1}}`);
  });

  it('leaves scalars and secret-free values unchanged', () => {
    expect(maskSecrets(3)).toBe(3);
    expect(maskSecrets({ a: [1, 'x'] })).toEqual({ a: [1, 'x'] });
  });
});

describe('maskString', () => {
  it('masks a string that is already masked to the same string (errors are masked twice on their way out)', () => {
    for (const raw of ['redis://h:1/?password=pw1', 'redis://alice:p@ss@host:6379/0', 'ADMIN_PASSWORD=x DB_TOKEN=y']) {
      const once = maskString(raw);
      expect(maskString(once)).toBe(once);
      expect(once).toContain(MASK);
    }
  });

  it('is the rule the Redis connection uses for the URLs it names', async () => {
    const { maskUrl } = await import('../../src/state/connect.js');
    expect(maskUrl('redis://alice:p@ss@host:6379/0?password=x')).toBe(maskString('redis://alice:p@ss@host:6379/0?password=x'));
    expect(maskUrl('redis://alice:p@ss@host:6379')).toBe(`redis://alice:${MASK}@host:6379`);
  });
});
