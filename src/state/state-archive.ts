/**
 * The disaster-recovery file of `ns8ctl backup-state`: two lines of text.
 *
 *   line 1: a JSON header in clear: format, version, created time, counts, KDF and cipher
 *           parameters (salt, iv). Nothing secret, nothing from the state but counts.
 *   line 2: base64 of AES-256-GCM(ciphertext || 16-byte tag) of the JSON payload, with the key
 *           derived by scrypt from a passphrase and the header line as additional data.
 *
 * GCM authenticates both lines: a changed byte anywhere, or a wrong passphrase, fails decryption
 * as a whole (the two cannot be told apart), and nothing is returned. Decoding is bounded: the KDF
 * parameters a file may ask for are capped, so a crafted header cannot make it run for minutes.
 */
import { createCipheriv, createDecipheriv, randomBytes, scrypt as scryptCb, type ScryptOptions } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { Ns8ctlError, UsageError } from '../errors.js';

export const ARCHIVE_FORMAT = 'ns8ctl-state-archive';
export const ARCHIVE_VERSION = 1;

/** What the first line says. */
export interface ArchiveHeader {
  format: typeof ARCHIVE_FORMAT;
  version: typeof ARCHIVE_VERSION;
  /** ISO time the backup was made. */
  created: string;
  /** Number of objects and keys (snapshotCounts). */
  counts: Record<string, number>;
  kdf: { name: 'scrypt'; N: number; r: number; p: number; salt: string };
  cipher: 'aes-256-gcm';
  iv: string;
}

/** scrypt cost for new archives (about 32 MiB and 0.1 s). */
const KDF = { N: 1 << 15, r: 8, p: 1 };
/** Largest cost a file may ask for when read (256 MiB of memory). */
const MAX_N = 1 << 18;
const MAX_R = 16;
const MAX_P = 4;
/** Largest archive read (bounded memory). */
export const MAX_ARCHIVE_BYTES = 256 * 1024 * 1024;
/** Shortest passphrase accepted. */
export const MIN_PASSPHRASE = 12;

function deriveKey(passphrase: string, salt: Buffer, p: { N: number; r: number; p: number }): Promise<Buffer> {
  const opts: ScryptOptions = { N: p.N, r: p.r, p: p.p, maxmem: 256 * p.N * p.r + 1024 * 1024 };
  return new Promise((resolve, reject) => scryptCb(passphrase.normalize('NFC'), salt, 32, opts, (err, key) => (err ? reject(err) : resolve(key))));
}

const invalid = (label: string, why: string): Ns8ctlError => new Ns8ctlError('state_archive_invalid', `${label} is not an ns8ctl state backup: ${why}`);

/**
 * Encrypts `payload` (JSON-serialisable) into archive bytes. `counts` go to the header in clear.
 * @throws UsageError when the passphrase is shorter than MIN_PASSPHRASE.
 */
export async function encryptArchive(payload: unknown, passphrase: string, meta: { created: Date; counts: Record<string, number> }): Promise<Buffer> {
  checkPassphrase(passphrase);
  const salt = randomBytes(16);
  const iv = randomBytes(12);
  const header: ArchiveHeader = {
    format: ARCHIVE_FORMAT,
    version: ARCHIVE_VERSION,
    created: meta.created.toISOString(),
    counts: meta.counts,
    kdf: { name: 'scrypt', ...KDF, salt: salt.toString('base64') },
    cipher: 'aes-256-gcm',
    iv: iv.toString('base64'),
  };
  const line = JSON.stringify(header);
  const key = await deriveKey(passphrase, salt, KDF);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(line, 'utf8'));
  const body = Buffer.concat([cipher.update(Buffer.from(JSON.stringify(payload), 'utf8')), cipher.final(), cipher.getAuthTag()]);
  return Buffer.from(`${line}\n${body.toString('base64')}\n`, 'utf8');
}

/**
 * The header of archive bytes, checked (format, version, parameters within bounds); no
 * passphrase needed.
 * @throws Ns8ctlError `state_archive_invalid` naming `label`.
 */
export function readArchiveHeader(bytes: Buffer, label = 'the file'): { header: ArchiveHeader; line: string; body: string } {
  const text = bytes.toString('utf8');
  const nl = text.indexOf('\n');
  if (nl < 0) throw invalid(label, 'no header line');
  const line = text.slice(0, nl);
  const body = text.slice(nl + 1).trim();
  let h: ArchiveHeader;
  try {
    h = JSON.parse(line) as ArchiveHeader;
  } catch {
    throw invalid(label, 'its first line is not JSON');
  }
  if (h?.format !== ARCHIVE_FORMAT) throw invalid(label, `its format is ${JSON.stringify(h?.format)}, want ${ARCHIVE_FORMAT}`);
  if (h.version !== ARCHIVE_VERSION) throw invalid(label, `version ${JSON.stringify(h.version)} is not supported (this ns8ctl reads version ${ARCHIVE_VERSION})`);
  const k = h.kdf;
  const int = (v: unknown, max: number): boolean => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= max;
  if (k?.name !== 'scrypt' || !int(k.N, MAX_N) || (k.N & (k.N - 1)) !== 0 || !int(k.r, MAX_R) || !int(k.p, MAX_P) || typeof k.salt !== 'string') {
    throw invalid(label, `key derivation ${JSON.stringify(k)} is not scrypt within N<=${MAX_N}, r<=${MAX_R}, p<=${MAX_P}`);
  }
  if (h.cipher !== 'aes-256-gcm' || typeof h.iv !== 'string' || Buffer.from(h.iv, 'base64').length !== 12) throw invalid(label, 'cipher is not aes-256-gcm with a 12-byte iv');
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(body)) throw invalid(label, 'its second line is not base64');
  return { header: h, line, body };
}

/**
 * Decrypts archive bytes. Returns the header and the parsed payload.
 * @throws Ns8ctlError `state_archive_invalid` (not an archive), `state_archive_unreadable` (wrong
 *   passphrase, or the file was changed: AES-GCM cannot tell which).
 */
export async function decryptArchive(bytes: Buffer, passphrase: string, label = 'the file'): Promise<{ header: ArchiveHeader; payload: unknown }> {
  const { header, line, body } = readArchiveHeader(bytes, label);
  const data = Buffer.from(body, 'base64');
  if (data.length < 17) throw invalid(label, 'its encrypted part is too short');
  const key = await deriveKey(passphrase, Buffer.from(header.kdf.salt, 'base64'), header.kdf);
  const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(header.iv, 'base64'));
  decipher.setAAD(Buffer.from(line, 'utf8'));
  decipher.setAuthTag(data.subarray(data.length - 16));
  let plain: Buffer;
  try {
    plain = Buffer.concat([decipher.update(data.subarray(0, data.length - 16)), decipher.final()]);
  } catch (err) {
    throw new Ns8ctlError('state_archive_unreadable', `cannot decrypt ${label}: the passphrase is wrong, or the file was changed since it was written (nothing was restored)`, { cause: err });
  }
  try {
    return { header, payload: JSON.parse(plain.toString('utf8')) as unknown };
  } catch {
    throw invalid(label, 'its decrypted content is not JSON');
  }
}

function checkPassphrase(p: string): void {
  if (p.length < MIN_PASSPHRASE) throw new UsageError(`the state passphrase must have at least ${MIN_PASSPHRASE} characters`);
}

/**
 * The passphrase: the content of `file` (one trailing newline dropped), else the environment
 * variable NS8CTL_STATE_PASSPHRASE. Never a command-line value (it would show in `ps`).
 * @throws UsageError when neither is given, the file cannot be read or the passphrase is short.
 */
export async function resolvePassphrase(file: string | undefined, env: NodeJS.ProcessEnv): Promise<string> {
  let p: string | undefined;
  if (file !== undefined) {
    try {
      p = (await fs.readFile(file, 'utf8')).replace(/\r?\n$/, '');
    } catch (err) {
      throw new UsageError(`cannot read the passphrase file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  } else p = env.NS8CTL_STATE_PASSPHRASE;
  if (p === undefined || p === '') throw new UsageError('the state file is encrypted: give the passphrase with --passphrase-file FILE or the environment variable NS8CTL_STATE_PASSPHRASE');
  checkPassphrase(p);
  return p;
}
