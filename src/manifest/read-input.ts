/**
 * Bounded, strict reading of input files and standard input: only regular files are opened (a
 * FIFO, a device such as /dev/zero, or a socket is refused before any read, and the open itself
 * cannot block), at most a limit of bytes is read, and the bytes must be UTF-8 (invalid bytes are
 * refused with their line and column, never turned into U+FFFD). No YAML here, so the CLI's entry
 * point can use it without loading the parsers.
 */
import { isUtf8 } from 'node:buffer';
import { closeSync, constants, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { Ns8ctlError } from '../errors.js';
import { DEFAULT_LIMITS, describeBytes } from './limits.js';

/** Input refused while reading (too large, not UTF-8), with the position when known (0:0 otherwise). */
export class InputError extends Ns8ctlError {
  constructor(
    code: string,
    message: string,
    readonly line = 0,
    readonly col = 0,
  ) {
    super(code, message, { user: true });
  }
}

/** What reading one input gave: its text, or why it was refused (with a position when known). */
export type ReadResult = { ok: true; text: string; bytes: number } | { ok: false; message: string; line: number; col: number };

/** What a non-regular file is, for messages. */
export function fileKind(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  if (st.isSymbolicLink()) return 'a symbolic link';
  return 'not a regular file';
}

/**
 * Offset of the first byte that is not part of a well-formed UTF-8 sequence (overlong forms,
 * surrogates and code points above U+10FFFF are not well-formed), or -1.
 */
export function firstInvalidUtf8(b: Uint8Array): number {
  let i = 0;
  while (i < b.length) {
    const c = b[i]!;
    if (c < 0x80) {
      i++;
      continue;
    }
    let n: number;
    let min: number;
    let cp: number;
    if (c >= 0xc2 && c <= 0xdf) [n, min, cp] = [1, 0x80, c & 0x1f];
    else if (c >= 0xe0 && c <= 0xef) [n, min, cp] = [2, 0x800, c & 0x0f];
    else if (c >= 0xf0 && c <= 0xf4) [n, min, cp] = [3, 0x10000, c & 0x07];
    else return i;
    for (let k = 1; k <= n; k++) {
      const x = b[i + k];
      if (x === undefined || (x & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (x & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += n + 1;
  }
  return -1;
}

/**
 * Decodes UTF-8 strictly (a leading byte order mark is dropped). Invalid bytes give a refusal
 * located at their line and column (columns count bytes).
 */
export function decodeUtf8(bytes: Uint8Array): ReadResult {
  if (!isUtf8(bytes)) {
    const at = Math.max(0, firstInvalidUtf8(bytes));
    let line = 1;
    let lineStart = 0;
    for (let i = 0; i < at; i++) {
      if (bytes[i] === 0x0a) {
        line++;
        lineStart = i + 1;
      }
    }
    const hex = (bytes[at] ?? 0).toString(16).padStart(2, '0');
    return { ok: false, message: `invalid UTF-8: byte 0x${hex} at offset ${at} is not valid UTF-8; manifests must be UTF-8 text`, line, col: at - lineStart + 1 };
  }
  let text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  return { ok: true, text, bytes: bytes.byteLength };
}

const tooLarge = (what: string, size: number | string, max: number): string =>
  `${what} is ${typeof size === 'number' ? describeBytes(size) : size}; the limit is ${describeBytes(max)} per file (limit maxFileBytes)`;

/**
 * Reads one regular file of at most `maxBytes` bytes as strict UTF-8. Never blocks on a FIFO or a
 * device and never reads more than `maxBytes + 1` bytes whatever the file claims. Never throws.
 */
export function readBoundedFile(file: string, maxBytes: number = DEFAULT_LIMITS.maxFileBytes): ReadResult {
  let fd: number;
  try {
    // O_NONBLOCK: opening a FIFO must not wait for a writer; fstat below refuses it anyway.
    fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (err) {
    return { ok: false, message: `cannot read file: ${describeFsError(err)}`, line: 0, col: 0 };
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) return { ok: false, message: `cannot read file: it is ${fileKind(st)}; only regular files are read`, line: 0, col: 0 };
    if (st.size > maxBytes) return { ok: false, message: tooLarge('file', st.size, maxBytes), line: 0, col: 0 };
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      // One byte past the size fstat gave, so the first read normally meets the end; a small file
      // then takes its buffer from Node's shared pool instead of a fresh allocation (1,000
      // manifests are 1,000 reads). A file that grew, or claims size 0, is read on in the loop.
      const buf = Buffer.allocUnsafe(Math.min(Math.max(st.size + 1, 1024), maxBytes + 1 - total));
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      chunks.push(buf.subarray(0, n));
      total += n;
      if (total > maxBytes) return { ok: false, message: tooLarge('file', `more than ${maxBytes} bytes`, maxBytes), line: 0, col: 0 };
    }
    // One read (the usual case): no copy into a new buffer.
    return decodeUtf8(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, total));
  } catch (err) {
    return { ok: false, message: `cannot read file: ${describeFsError(err)}`, line: 0, col: 0 };
  } finally {
    closeSync(fd);
  }
}

/**
 * Reads standard input (or `stream`) to its end, at most `maxBytes` bytes, as strict UTF-8.
 * @throws InputError `input_too_large` past the limit (the rest is not read), `input_not_utf8`
 *   for invalid bytes (InputError, with their line and column).
 */
export async function readBoundedStdin(maxBytes: number = DEFAULT_LIMITS.maxFileBytes, stream: AsyncIterable<unknown> = process.stdin): Promise<string> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of stream) {
    const b = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
    chunks.push(b);
    total += b.length;
    if (total > maxBytes) {
      // Stop reading: /dev/zero or an endless producer must not keep us busy.
      (stream as { destroy?: () => void }).destroy?.();
      throw new InputError('input_too_large', tooLarge('standard input', `more than ${maxBytes} bytes`, maxBytes));
    }
  }
  const r = decodeUtf8(Buffer.concat(chunks, total));
  if (!r.ok) throw new InputError('input_not_utf8', r.message, r.line, r.col);
  return r.text;
}

/** A file system error in words. */
export function describeFsError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT') return 'no such file or directory';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EISDIR') return 'is a directory';
  if (code === 'ELOOP') return 'too many levels of symbolic links';
  return err instanceof Error ? err.message : String(err);
}
