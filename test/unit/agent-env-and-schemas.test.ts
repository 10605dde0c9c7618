import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, chmodSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { diffConfiguration, formatConfigurationDiff, validateConfiguration } from '../../src/configuration/configuration.js';
import { formatEnvironment, parseEnvironment, readEnvironmentFile, updateEnvironmentFile, writeEnvironmentFile } from '../../src/agent/env-file.js';
import { compileSchema, toNs8Errors } from '../../src/configuration/schema-validation.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'agent-env-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('state/environment file', () => {
  it('parses like NS8: split at the first "=", lines without "=" ignored, no unquoting', () => {
    const env = parseEnvironment('A=1\nB=x=y\nnoise\nC="q"\n=bad\n');
    expect([...env.entries()]).toEqual([
      ['A', '1'],
      ['B', 'x=y'],
      ['C', '"q"'],
    ]);
  });

  it('writes sorted KEY=VALUE lines', () => {
    expect(formatEnvironment({ ZED: '1', ALPHA: 'a b', MID: '' })).toBe('ALPHA=a b\nMID=\nZED=1\n');
  });

  it('refuses a value with a newline, naming the variable, and leaves the file untouched', async () => {
    const file = path.join(dir, 'environment');
    writeFileSync(file, 'KEEP=1\n');
    await expect(updateEnvironmentFile(file, (e) => e.set('EVIL', 'x\nPATH=/tmp'))).rejects.toThrow(/value of EVIL contains a newline/);
    expect(readFileSync(file, 'utf8')).toBe('KEEP=1\n');
    await expect(writeEnvironmentFile(file, { 'BAD NAME': '1' })).rejects.toThrow(/variable name "BAD NAME" is not valid/);
  });

  it('keeps the file mode and leaves no temporary file behind', async () => {
    const file = path.join(dir, 'environment');
    writeFileSync(file, 'A=1\n');
    chmodSync(file, 0o640);
    await writeEnvironmentFile(file, { B: '2' });
    expect(statSync(file).mode & 0o777).toBe(0o640);
    expect(readdirSync(dir)).toEqual(['environment']);
  });

  it('loses no update when many changes run concurrently in one process', async () => {
    const file = path.join(dir, 'environment');
    await Promise.all(Array.from({ length: 40 }, (_, i) => updateEnvironmentFile(file, (e) => e.set(`V${i}`, String(i)))));
    const env = await readEnvironmentFile(file);
    expect(env.size).toBe(40);
    expect(env.get('V39')).toBe('39');
  });
});

describe('action schemas in NS8 error form', () => {
  const schema = {
    type: 'object',
    required: ['name', 'admin_password'],
    properties: { name: { type: 'string', minLength: 2 }, port: { type: 'integer' }, admin_password: { type: 'string', minLength: 8 }, email: { type: 'string', format: 'email' } },
  };

  it('gives parameter, error, value and field for each problem', () => {
    const v = compileSchema(schema, 'test');
    const doc = { name: 'x', port: 'eighty', email: 'not-mail' };
    expect(v(doc)).toBe(false);
    const errs = toNs8Errors(v.errors, doc);
    expect(errs).toEqual(
      expect.arrayContaining([
        { parameter: 'admin_password', error: 'admin_password_required', value: 'XXX', field: 'admin_password' },
        { parameter: 'name', error: 'name_string_gte', value: 'x', field: 'name' },
        { parameter: 'port', error: 'port_invalid_type', value: 'eighty', field: 'port' },
        { parameter: 'email', error: 'email_format', value: 'not-mail', field: 'email' },
      ]),
    );
  });

  it('never copies a secret value into the error list (it is stored as task output)', () => {
    const v = compileSchema(schema, 'test');
    const doc = { name: 'ok', admin_password: 'short' };
    v(doc);
    expect(JSON.stringify(toNs8Errors(v.errors, doc))).not.toContain('short');
  });

  it('names the schema when the schema itself is broken', () => {
    expect(() => compileSchema({ type: 'no-such-type' }, 'actions/x/validate-input.json')).toThrow(/JSON Schema actions\/x\/validate-input.json cannot be used/);
  });
});

describe('declarative configuration', () => {
  const schema = {
    $schema: 'http://json-schema.org/draft-07/schema#',
    type: 'object',
    additionalProperties: false,
    required: ['wiki_name'],
    properties: {
      wiki_name: { type: 'string' },
      theme: { type: 'string', enum: ['light', 'dark'], default: 'light' },
      admin_password: { type: 'string', minLength: 8 },
      hosts: { type: 'array', items: { type: 'string', format: 'hostname' } },
    },
  };

  it('reports every problem with a pointer under the given base and what is allowed', () => {
    const problems = validateConfiguration({ theme: 'blue', colour: 1, hosts: ['ok.example', 'bad host'], admin_password: 'short' }, schema, { basePointer: '/spec/configuration' });
    expect(problems).toEqual(
      expect.arrayContaining([
        { pointer: '/spec/configuration', message: 'required field "wiki_name" is missing' },
        { pointer: '/spec/configuration/colour', message: 'field "colour" is not allowed; allowed: admin_password, hosts, theme, wiki_name' },
        { pointer: '/spec/configuration/theme', message: 'must be one of "light", "dark" (got "blue")' },
        { pointer: '/spec/configuration/hosts/1', message: 'must be a valid hostname (got "bad host")' },
      ]),
    );
    const pw = problems.find((p) => p.pointer === '/spec/configuration/admin_password');
    expect(pw?.message).toBeDefined();
    expect(pw?.message).not.toContain('short');
  });

  it('accepts a valid configuration with no problems', () => {
    expect(validateConfiguration({ wiki_name: 'w' }, schema)).toEqual([]);
  });

  it('reports an unusable schema as one problem instead of throwing', () => {
    expect(validateConfiguration({}, { type: 42 }, { basePointer: '/spec/configuration' })).toEqual([{ pointer: '/spec/configuration', message: expect.stringMatching(/cannot be used/) }]);
  });

  it('finds no drift when only key order differs or a default fills the gap', () => {
    const d = diffConfiguration({ wiki_name: 'w', hosts: ['a'] }, { hosts: ['a'], theme: 'light', wiki_name: 'w' }, { schema });
    expect(d).toEqual({ equal: true, changes: [] });
  });

  it('reports changed, missing and (strict) extra fields with pointers', () => {
    const d = diffConfiguration({ wiki_name: 'new', hosts: ['a', 'b'], nested: { x: 1 } }, { wiki_name: 'old', hosts: ['a'], more: true }, { strict: true });
    expect(d.changes).toEqual([
      { pointer: '/hosts', kind: 'changed', desired: ['a', 'b'], actual: ['a'] },
      { pointer: '/nested', kind: 'missing', desired: { x: 1 } },
      { pointer: '/wiki_name', kind: 'changed', desired: 'new', actual: 'old' },
      { pointer: '/more', kind: 'extra', actual: true },
    ]);
    expect(formatConfigurationDiff(d)).toContain('~ /wiki_name: "old" -> "new"');
  });

  it('treats secrets get-configuration does not return as write-only, and masks differing ones', () => {
    expect(diffConfiguration({ wiki_name: 'w', admin_password: 's3cret!!' }, { wiki_name: 'w' }).equal).toBe(true);
    const d = diffConfiguration({ api_token: 'new-token' }, { api_token: 'old-token' });
    expect(d.changes).toEqual([{ pointer: '/api_token', kind: 'changed', desired: 'XXX', actual: 'XXX' }]);
  });
});
