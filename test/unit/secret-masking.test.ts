import { describe, expect, it } from '@jest/globals';
import { validateConfiguration, diffConfiguration } from '../../src/configuration/configuration.js';
import { maskSecrets as maskForTask } from '../../src/runtime/mask-ns8.js';
import { toNs8Errors, compileSchema } from '../../src/configuration/schema-validation.js';
import { formatDiagnostic } from '../../src/errors.js';
import { parseManifestText } from '../../src/manifest/load.js';
import { validateManifests } from '../../src/manifest/validate.js';
import { MASK, isSecretKey, maskSecrets, maskString, secretNamesOfSchema } from '../../src/runtime/mask.js';

describe('one secret rule set', () => {
  it.each(['db_pw', 'smtpPw', 'DB_PWD', 'dbpwd', 'pw', 'ldap-pw', 'api_creds', 'basic_auth', 'admin_passwd'])('treats %s as secret (the documented name rule)', (name) => expect(isSecretKey(name)).toBe(true));

  it.each(['power', 'pwa_enabled', 'author', 'keyboard', 'host', 'username'])('treats %s as not secret', (name) => expect(isSecretKey(name)).toBe(false));

  it('is the same rule for the module agent (NS8 XXX) and for what ns8ctl prints', () => {
    const value = { db_pw: 'a', nested: { smtp_pwd: 'b', list: [{ token: 'c' }] }, title: 'd' };
    expect(maskForTask(value)).toEqual({ db_pw: 'XXX', nested: { smtp_pwd: 'XXX', list: [{ token: 'XXX' }] }, title: 'd' });
    expect(maskSecrets(value)).toEqual({ db_pw: MASK, nested: { smtp_pwd: MASK, list: [{ token: MASK }] }, title: 'd' });
  });

  it('masks a whole URL password holding @ (the userinfo ends at the LAST @)', () => {
    expect(maskString('redis://alice:p@ss@host:6379/0')).toBe(`redis://alice:${MASK}@host:6379/0`);
    expect(maskString('see https://bob:a@b:c@d@example.org/x and more')).toBe(`see https://bob:${MASK}@example.org/x and more`);
    expect(maskString('connect ENOENT //user:pw1@127.0.0.1:1/')).toBe(`connect ENOENT //user:${MASK}@127.0.0.1:1/`);
  });

  it('masks secret query and NAME=value parameters, not other ones', () => {
    expect(maskString('redis://h:6379/0?password=s3cr3t&db=2')).toBe(`redis://h:6379/0?password=${MASK}&db=2`);
    expect(maskString('https://h/x?user=a&access_token=t0k&x=1')).toBe(`https://h/x?user=a&access_token=${MASK}&x=1`);
    expect(maskString('ADMIN_PASSWORD=hunter2 TITLE=wiki')).toBe(`ADMIN_PASSWORD=${MASK} TITLE=wiki`);
  });

  it('takes secret marks from a schema: format password, writeOnly, secret', () => {
    const schema = { type: 'object', properties: { login: { type: 'string', format: 'password' }, x: { writeOnly: true }, nested: { type: 'object', properties: { y: { secret: true } } }, title: { type: 'string' } } };
    expect([...secretNamesOfSchema(schema)].sort()).toEqual(['login', 'x', 'y']);
    expect(maskSecrets({ login: 'l', title: 't', nested: { y: 1 } }, { secretNames: secretNamesOfSchema(schema) })).toEqual({ login: MASK, title: 't', nested: { y: MASK } });
  });
});

describe('secrets in validation messages', () => {
  const problems = (text: string): string[] => validateManifests({ ...parseManifestText('m.yaml', text), files: ['m.yaml'] }).diagnostics.map(formatDiagnostic);

  it('never shows a value under a secret key, even of the wrong type', () => {
    const out = problems('apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {db_password: 123456, smtp_pw: 654321}\nspec: {id: 1}\n');
    expect(out).toEqual([
      `m.yaml:5:25  /metadata/labels/db_password  db_password: expected string, got integer ${MASK}`,
      `m.yaml:5:42  /metadata/labels/smtp_pw  smtp_pw: expected string, got integer ${MASK}`,
    ]);
  });

  it('masks URL passwords and cuts long values in messages', () => {
    const out = problems(`apiVersion: ns8ctl.nethserver.org/v1\nkind: Repository\nmetadata: {name: r}\nspec: {url: "gopher://al:p@ss@h/${'x'.repeat(100)}"}\n`);
    expect(out).toEqual([`m.yaml:4:13  /spec/url  url: "gopher://al:${MASK}@h/xxxx... (134 characters) is not valid: expected an http://, https:// or file:// URL of the repository (https://distfeed.nethserver.org/ns8/updates/)`]);
  });

  it('configuration validation masks fields the schema marks as passwords, and by name', () => {
    const schema = { type: 'object', properties: { login: { type: 'string', format: 'password', minLength: 12 }, db_pw: { type: 'string' }, title: { type: 'string' } } };
    const msgs = validateConfiguration({ login: 'short-pw', db_pw: 123456, title: 7 }, schema).map((p) => `${p.pointer} ${p.message}`);
    expect(msgs.join('\n')).not.toMatch(/short-pw|123456/);
    expect(msgs).toContain('/title must be string (got 7)');
    const diff = diffConfiguration({ login: 'a' }, { login: 'b' }, { schema });
    expect(JSON.stringify(diff)).not.toMatch(/"a"|"b"/);
  });

  it('NS8 error lists of the module agent mask fields a schema marks as passwords', () => {
    const validate = compileSchema({ type: 'object', properties: { login: { type: 'string', format: 'password', minLength: 12 } } }, 'x');
    validate({ login: 'tiny' });
    expect(toNs8Errors(validate.errors, { login: 'tiny' })).toEqual([{ parameter: 'login', error: 'login_string_gte', value: 'XXX', field: 'login' }]);
  });
});
