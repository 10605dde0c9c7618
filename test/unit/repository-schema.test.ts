import { readFileSync } from 'node:fs';
import { RepositoryError } from '../../src/repository/errors.js';
import { checkRepodata, parseRepodata, repodataSchema } from '../../src/repository/repodata.js';
import { errorOf } from '../support/caught.js';

const sampleText = readFileSync(new URL('../fixtures/repodata/sample.json', import.meta.url), 'utf8');
const sample = (): Record<string, unknown>[] => JSON.parse(sampleText) as Record<string, unknown>[];

const parseError = (text: string): RepositoryError => errorOf(RepositoryError, () => parseRepodata(text, 'default', 'https://repo.test/repodata.json'));

describe('repodata schema', () => {
  it('is a draft-07 schema for an array of packages', () => {
    expect(repodataSchema()).toMatchObject({ $schema: 'http://json-schema.org/draft-07/schema#', type: 'array' });
  });

  it('accepts a repodata in the NS8 format, including optional upstream_name, terms_url and a null logo', () => {
    expect(checkRepodata(sample())).toEqual([]);
    expect(parseRepodata(sampleText, 'default', 'x')).toHaveLength(2);
  });

  it('accepts fields it does not know (core adds repository, repository_updated)', () => {
    const data = sample();
    (data[0] as Record<string, unknown>).repository = 'default';
    expect(checkRepodata(data)).toEqual([]);
  });

  it('accepts an empty repository', () => {
    expect(checkRepodata([])).toEqual([]);
  });

  it('reports a missing required field at its JSON pointer with the package id', () => {
    const data = sample();
    delete (data[1] as Record<string, unknown>).versions;
    expect(checkRepodata(data)).toEqual([{ where: '/1/versions', message: "is required (package 'vault')" }]);
  });

  it('reports every problem at once', () => {
    const data = sample();
    const p = data[0] as Record<string, unknown>;
    p.source = 'docker://ghcr.io/example/webapp:1.0';
    p.logo = 7;
    ((p.versions as Record<string, unknown>[])[1] as Record<string, unknown>).testing = 'no';
    const problems = checkRepodata(data);
    expect(problems).toEqual(
      expect.arrayContaining([
        { where: '/0/source', message: `"docker://ghcr.io/example/webapp:1.0" is not an image URL without tag (registry/path/name, e.g. ghcr.io/nethserver/dokuwiki) (package 'webapp')` },
        { where: '/0/logo', message: "must be string or null (package 'webapp')" },
        { where: '/0/versions/1/testing', message: "must be boolean (package 'webapp')" },
      ]),
    );
    expect(problems).toHaveLength(3);
  });

  it('requires label values to be strings', () => {
    const data = sample();
    (((data[1] as Record<string, unknown>).versions as Record<string, unknown>[])[0] as Record<string, unknown>).labels = { 'org.nethserver.max-per-node': 1 };
    expect(checkRepodata(data)).toEqual([{ where: '/1/versions/0/labels/org.nethserver.max-per-node', message: "must be string (package 'vault')" }]);
  });

  it('rejects a document that is not an array', () => {
    expect(checkRepodata({ packages: [] })).toEqual([{ where: '/', message: 'must be array' }]);
  });

  it('names the repository, the source and each pointer when parsing invalid metadata', () => {
    const data = sample();
    delete (data[0] as Record<string, unknown>).docs;
    const e = parseError(JSON.stringify(data));
    expect(e.code).toBe('repodata_is_not_valid_metadata');
    expect(e.message).toBe("repository 'default': https://repo.test/repodata.json does not match the repodata schema (1 problem):\n  /0/docs  is required (package 'webapp')");
    expect(e.problems).toEqual([{ where: '/0/docs', message: "is required (package 'webapp')" }]);
  });

  it('says when the metadata is not JSON at all', () => {
    const e = parseError('<html>not found</html>');
    expect(e.code).toBe('repodata_is_not_json');
    expect(e.message).toMatch(/^repository 'default': https:\/\/repo\.test\/repodata\.json is not JSON: /);
  });
});
