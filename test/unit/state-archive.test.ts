/**
 * The encrypted state backup format: round trip, a wrong passphrase or any changed byte refuses
 * to decrypt, the header says nothing secret, the passphrase comes from a file or the
 * environment only. Real crypto (node:crypto), no fakes.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { decryptArchive, encryptArchive, readArchiveHeader, resolvePassphrase } from '../../src/state/state-archive.js';

const PASS = 'correct horse battery staple';
const SECRET = 'S3cr3t-value-that-must-not-leak';
const payload = { version: 1, hashes: { 'module/mail1/environment': { DB_PASSWORD: SECRET } } };
const created = new Date('2026-12-05T06:00:00.000Z');

async function archive(): Promise<Buffer> {
  return encryptArchive(payload, PASS, { created, counts: { modules: 1, keys: 1 } });
}

describe('state archive', () => {
  test('decrypts to the payload it was made from, and its header tells only format, time, counts and crypto parameters', async () => {
    const bytes = await archive();
    expect(await decryptArchive(bytes, PASS)).toEqual({ header: expect.objectContaining({ created: '2026-12-05T06:00:00.000Z', counts: { modules: 1, keys: 1 } }), payload });
    const { header } = readArchiveHeader(bytes);
    expect(Object.keys(header).sort()).toEqual(['cipher', 'counts', 'created', 'format', 'iv', 'kdf', 'version']);
    expect(header).toMatchObject({ format: 'ns8ctl-state-archive', version: 1, cipher: 'aes-256-gcm', kdf: { name: 'scrypt', N: 32768, r: 8, p: 1 } });
  });

  test('a secret of the payload appears nowhere in the file bytes, in clear or base64', async () => {
    const bytes = await archive();
    for (const needle of [SECRET, Buffer.from(SECRET).toString('base64').slice(0, 16), 'DB_PASSWORD', 'mail1']) expect(bytes.includes(needle)).toBe(false);
  });

  test('two archives of the same payload differ (fresh salt and iv)', async () => {
    expect((await archive()).equals(await archive())).toBe(false);
  });

  test('a wrong passphrase is refused with a clear error', async () => {
    await expect(decryptArchive(await archive(), 'another passphrase!', 'b.enc')).rejects.toMatchObject({ code: 'state_archive_unreadable', message: expect.stringContaining('cannot decrypt b.enc: the passphrase is wrong, or the file was changed') });
  });

  test('one changed byte in the encrypted part, or a changed header, is refused', async () => {
    const bytes = await archive();
    const text = bytes.toString('utf8');
    const nl = text.indexOf('\n');
    const body = text.slice(nl + 1);
    const flipped = body[10] === 'A' ? 'B' : 'A';
    const tamperedBody = Buffer.from(text.slice(0, nl + 1) + body.slice(0, 10) + flipped + body.slice(11));
    await expect(decryptArchive(tamperedBody, PASS)).rejects.toMatchObject({ code: 'state_archive_unreadable' });
    // The header is authenticated too: changed counts (still valid JSON) fail decryption.
    const tamperedHeader = Buffer.from(text.replace('"modules":1', '"modules":7'));
    expect(readArchiveHeader(tamperedHeader).header.counts.modules).toBe(7);
    await expect(decryptArchive(tamperedHeader, PASS)).rejects.toMatchObject({ code: 'state_archive_unreadable' });
  });

  test('something that is not an archive, or asks for an unbounded key derivation, is refused before any work', async () => {
    await expect(decryptArchive(Buffer.from('apiVersion: v1\n'), PASS, 'x.yaml')).rejects.toMatchObject({ code: 'state_archive_invalid', message: 'x.yaml is not an ns8ctl state backup: its first line is not JSON' });
    const text = (await archive()).toString('utf8');
    const huge = Buffer.from(text.replace('"N":32768', `"N":${2 ** 24}`));
    expect(() => readArchiveHeader(huge, 'h.enc')).toThrow(/key derivation .* is not scrypt within N<=262144/);
    expect(() => readArchiveHeader(Buffer.from(text.replace('"version":1', '"version":2')), 'v.enc')).toThrow('v.enc is not an ns8ctl state backup: version 2 is not supported');
  });

  test('the passphrase comes from a file (trailing newline dropped) or NS8CTL_STATE_PASSPHRASE, and must be long enough', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-pass-'));
    try {
      const f = path.join(dir, 'pass');
      writeFileSync(f, `${PASS}\n`);
      expect(await resolvePassphrase(f, {})).toBe(PASS);
      expect(await resolvePassphrase(undefined, { NS8CTL_STATE_PASSPHRASE: PASS })).toBe(PASS);
      await expect(resolvePassphrase(undefined, {})).rejects.toMatchObject({ code: 'usage', message: expect.stringContaining('--passphrase-file FILE or the environment variable NS8CTL_STATE_PASSPHRASE') });
      await expect(resolvePassphrase(undefined, { NS8CTL_STATE_PASSPHRASE: 'short' })).rejects.toMatchObject({ message: 'the state passphrase must have at least 12 characters' });
      await expect(resolvePassphrase(path.join(dir, 'missing'), {})).rejects.toMatchObject({ message: expect.stringContaining('ENOENT') });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
