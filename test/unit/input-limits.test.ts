import { describe, expect, test } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { formatDiagnostic } from '../../src/errors.js';
import { loadManifests, parseManifestText } from '../../src/manifest/load.js';
import { InputError, firstInvalidUtf8, readBoundedFile, readBoundedStdin } from '../../src/manifest/read-input.js';
import { validateManifests } from '../../src/manifest/validate.js';

const HEAD = 'apiVersion: ns8ctl.nethserver.org/v1\n';
const nodeDoc = (id: string | number, extra = ''): string => `${HEAD}kind: Node\nmetadata:\n  name: n${id}\nspec:\n  id: ${id}\n${extra}`;
const moduleDoc = (spec: string): string => `${HEAD}kind: Module\nmetadata:\n  name: webapp1\nspec:\n  image: 127.0.0.1:5000/x/webapp:1.0.0\n${spec}`;

function tree(files: Record<string, string | Buffer> = {}): string {
  const root = mkdtempSync(join(tmpdir(), 'ns8ctl-limits-'));
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(join(root, rel, '..'), { recursive: true });
    writeFileSync(join(root, rel), text);
  }
  return root;
}

/** Every problem of validating `text` as one file, formatted. */
function problems(text: string, limits = {}): string[] {
  const parsed = parseManifestText('m.yaml', text, { limits });
  return validateManifests({ ...parsed, files: ['m.yaml'] }, { knownNodes: [1] }).diagnostics.map(formatDiagnostic);
}

describe('YAML limits on every parse path', () => {
  test('an alias bomb is refused at once, naming the alias limit, in the fast path too', () => {
    let bomb = '    a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n';
    for (let i = 1; i < 10; i++) bomb += `    a${i}: &a${i} [${Array(9).fill(`*a${i - 1}`).join(',')}]\n`;
    const out = problems(moduleDoc('  node: 1\n  configuration:\n' + bomb));
    expect(out).toHaveLength(1);
    expect(out[0]).toMatch(/^m\.yaml:\d+:\d+ {2}\/ {2}YAML problem: .*alias.*\(limit maxAliases: 100\)$/);
  });

  test('flow nesting deeper than the depth limit is refused before parsing, at the offending bracket', () => {
    const text = moduleDoc('  node: 1\n  configuration: {a: ' + '['.repeat(100_000) + ']'.repeat(100_000) + '}\n');
    expect(problems(text)).toEqual([expect.stringMatching(/^m\.yaml:8:\d+ {2}\/ {2}YAML problem: \[ and \{ nest deeper than 64 levels; not parsed \(limit maxDepth\)$/)]);
  });

  test('block nesting deeper than the depth limit is refused at the value, naming the limit', () => {
    const nested = Array.from({ length: 70 }, (_, i) => ' '.repeat(4 + 2 * i) + `k${i}:\n`).join('') + ' '.repeat(144) + 'v: 1\n';
    expect(problems(moduleDoc('  node: 1\n  configuration:\n' + nested))[0]).toMatch(/\/spec\/configuration(\/k\d+)+ {2}nesting is deeper than 64 levels \(limit maxDepth\)$/);
  });

  test('a value over the per-value limit is refused with its place and never printed', () => {
    const out = problems(moduleDoc(`  node: 1\n  configuration:\n    blob: "${'Z'.repeat(300_000)}"\n`));
    expect(out).toEqual(['m.yaml:9:11  /spec/configuration/blob  value is 300000 characters long; at most 262144 per value (limit maxValueChars); not shown']);
  });

  test('a text over the file limit is refused whatever the path (parseManifestText is used by add-module and adopt too)', () => {
    expect(problems('# ' + 'x'.repeat(100), { maxFileBytes: 50 })).toEqual([expect.stringMatching(/^m\.yaml:0:0 {2}\/ {2}text is 102 characters; the limit is 50 bytes per file \(limit maxFileBytes\)$/)]);
  });

  test('integers beyond 2^53 - 1 are refused instead of being stored rounded', () => {
    expect(problems(nodeDoc('9007199254740993'))).toEqual([expect.stringMatching(/^m\.yaml:6:7 {2}\/spec\/id {2}integer is beyond 2\^53 - 1/)]);
    expect(problems(moduleDoc('  node: 1e300\n'))[0]).toMatch(/\/spec\/node {2}integer is beyond 2\^53 - 1/);
  });

  test('0b1 is a string as YAML 1.2 core says, so an integer field refuses it (fast path and precise path agree)', () => {
    expect(problems(moduleDoc('  node: 0b1\n'))).toEqual(['m.yaml:7:9  /spec/node  node: expected integer >= 1, got string "0b1"']);
    expect(problems(moduleDoc('  node: 0b1\n  configuration: {a: &x 1, b: *x}\n'))).toEqual(['m.yaml:7:9  /spec/node  node: expected integer >= 1, got string "0b1"']);
  });

  test('control characters YAML does not allow are refused with their line and column', () => {
    expect(problems(nodeDoc(1, '  address: a\u0007b\n'))).toEqual(['m.yaml:7:13  /  YAML problem: control character U+0007 is not allowed in YAML text (write it as an escape in a double-quoted string)']);
  });

  test('a document that is not a mapping is not echoed', () => {
    const out = problems('root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n');
    expect(out).toEqual(['m.yaml:1:1  /  a manifest must be a mapping with apiVersion, kind, metadata and spec; got a string of 79 characters']);
  });
});

describe('keys in messages', () => {
  test('a long unknown key is cut in the message, not echoed whole', () => {
    const out = problems(nodeDoc(1, `  ${'k'.repeat(900)}: 1\n`));
    expect(out).toEqual([`m.yaml:7:3  /spec/${'k'.repeat(900)}  unknown field "${'k'.repeat(36)}... (902 characters) in /spec; allowed: id, address, flags`]);
  });
});

describe('reading files and standard input', () => {
  test('invalid UTF-8 is refused with its line and column, never turned into U+FFFD', async () => {
    const root = tree({ 'a.yaml': Buffer.concat([Buffer.from(nodeDoc(1, '  address: caf')), Buffer.from([0xe9, 0x0a])]) });
    const r = await loadManifests([join(root, 'a.yaml')]);
    expect(r.documents).toEqual([]);
    expect(r.diagnostics.map(formatDiagnostic)).toEqual([`${join(root, 'a.yaml')}:7:15  /  invalid UTF-8: byte 0xe9 at offset 97 is not valid UTF-8; manifests must be UTF-8 text`]);
  });

  test('overlong forms, surrogates and truncated sequences are not UTF-8', () => {
    expect(firstInvalidUtf8(Buffer.from('ok é €'))).toBe(-1);
    expect(firstInvalidUtf8(Buffer.from([0x61, 0xc0, 0xaf]))).toBe(1);
    expect(firstInvalidUtf8(Buffer.from([0xed, 0xa0, 0x80]))).toBe(0);
    expect(firstInvalidUtf8(Buffer.from([0x61, 0x62, 0xe2, 0x82]))).toBe(2);
  });

  test('a FIFO, /dev/zero and /dev/null given with -f are refused without reading', async () => {
    const root = tree();
    execFileSync('mkfifo', [join(root, 'p.yaml')]);
    const r = await loadManifests([join(root, 'p.yaml'), '/dev/zero', '/dev/null']);
    expect(r.diagnostics.map((d) => d.message)).toEqual([
      `cannot read -f ${join(root, 'p.yaml')}: it is a FIFO (named pipe); only regular files, directories and - (standard input) are read`,
      'cannot read -f /dev/zero: it is a character device; only regular files, directories and - (standard input) are read',
      'cannot read -f /dev/null: it is a character device; only regular files, directories and - (standard input) are read',
    ]);
    expect(readBoundedFile('/dev/zero')).toEqual({ ok: false, message: 'cannot read file: it is a character device; only regular files are read', line: 0, col: 0 });
  });

  test('a file over the size limit is refused without reading it all', async () => {
    const root = tree({ 'big.yaml': '#'.repeat(2000) });
    const r = await loadManifests([join(root, 'big.yaml')], { limits: { maxFileBytes: 1000 } });
    expect(r.diagnostics.map((d) => d.message)).toEqual(['file is 2000 bytes; the limit is 1000 bytes per file (limit maxFileBytes)']);
  });

  test('standard input that never ends is cut off at the limit', async () => {
    const zeros = Readable.from(
      (function* () {
        for (;;) yield Buffer.alloc(1024);
      })(),
    );
    await expect(readBoundedStdin(10_000, zeros)).rejects.toThrow(new InputError('input_too_large', 'standard input is more than 10000 bytes; the limit is 10000 bytes per file (limit maxFileBytes)'));
  });

  test('invalid UTF-8 on standard input is located', async () => {
    const r = await loadManifests(['-'], { stdin: () => readBoundedStdin(1000, Readable.from([Buffer.from([0x6b, 0x3a, 0x0a, 0x20, 0xc3, 0x28])])) });
    expect(r.diagnostics.map(formatDiagnostic)).toEqual(['-:2:2  /  invalid UTF-8: byte 0xc3 at offset 4 is not valid UTF-8; manifests must be UTF-8 text']);
  });

  test('total bytes over the limit stop the load with a diagnostic naming the limit', async () => {
    const root = tree({ 'a.yaml': nodeDoc(1), 'b.yaml': nodeDoc(2), 'c.yaml': nodeDoc(3) });
    const r = await loadManifests([root], { limits: { maxTotalBytes: 150 } });
    expect(r.documents).toHaveLength(1);
    expect(r.diagnostics.map((d) => d.message)).toEqual([expect.stringMatching(/hold more than 150 bytes; this one and the rest are not read \(limit maxTotalBytes\)$/)]);
  });
});

describe('directory walk', () => {
  test('two `ln -s . x` links are not followed: the walk stays linear and says why', async () => {
    const root = tree({ 'n.yaml': nodeDoc(1) });
    symlinkSync('.', join(root, 'x'));
    symlinkSync('.', join(root, 'y'));
    const r = await loadManifests([root]);
    expect(r.documents).toHaveLength(1);
    expect(r.diagnostics.map((d) => `${d.file} ${d.message}`)).toEqual([
      `${join(root, 'x')} symbolic link to a directory: not followed (links to directories can loop or leave ${root}); give that directory with its own -f`,
      `${join(root, 'y')} symbolic link to a directory: not followed (links to directories can loop or leave ${root}); give that directory with its own -f`,
    ]);
  });

  test('a link to a file outside the directory is not read, so its content cannot be echoed', async () => {
    const outside = tree({ 'admin.password': 'Sup3r-Secret-Adm1n\n' });
    const root = tree({ 'n.yaml': nodeDoc(1) });
    symlinkSync(join(outside, 'admin.password'), join(root, 'admin.yaml'));
    symlinkSync('/etc/passwd', join(root, 'passwd.yaml'));
    const r = await loadManifests([root]);
    const text = JSON.stringify(r);
    expect(text).not.toContain('Sup3r-Secret');
    expect(text).not.toContain('root:x:0');
    expect(r.diagnostics.map((d) => d.message)).toEqual([
      `symbolic link points outside ${root}: not read (a link may only point at a file inside the directory given with -f)`,
      `symbolic link points outside ${root}: not read (a link may only point at a file inside the directory given with -f)`,
    ]);
  });

  test('a FIFO with a manifest name inside a directory is refused, not opened', async () => {
    const root = tree({ 'n.yaml': nodeDoc(1) });
    execFileSync('mkfifo', [join(root, 'p.yaml')]);
    const r = await loadManifests([root]);
    expect(r.diagnostics.map((d) => d.message)).toEqual(['cannot read file: it is a FIFO (named pipe); only regular files are read']);
  });

  test('file count and directory depth are bounded, naming the limit', async () => {
    const root = tree({ 'a.yaml': nodeDoc(1), 'b.yaml': nodeDoc(2), 'c.yaml': nodeDoc(3), 'd/e/f/g.yaml': nodeDoc(4) });
    expect((await loadManifests([root], { limits: { maxFiles: 2 } })).diagnostics.map((d) => d.message)).toEqual(['more than 2 manifest files; none past the limit is read (limit maxFiles)']);
    const deep = await loadManifests([root], { limits: { maxDirectoryDepth: 2 } });
    expect(deep.diagnostics.map((d) => d.message)).toEqual([`directory is more than 2 levels below ${root}; not read (limit maxDirectoryDepth)`]);
  });
});
