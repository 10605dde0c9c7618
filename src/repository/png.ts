/**
 * PNG checks for createrepo: the seeds require logo.png to be a 256x256 PNG and screenshots
 * 1024x768 PNGs. Reads the signature and the IHDR chunk (the first 24 bytes) itself.
 */
import { open } from 'node:fs/promises';

/** Pixel size read from a PNG's IHDR chunk. */
export interface PngSize {
  width: number;
  height: number;
}

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Names the format of a non-PNG header, for error messages. */
function sniff(head: Buffer): string {
  if (head.length === 0) return 'an empty file';
  if (head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return 'a JPEG image';
  if (head.subarray(0, 4).toString('latin1') === 'GIF8') return 'a GIF image';
  if (head.subarray(0, 4).toString('latin1') === 'RIFF' && head.subarray(8, 12).toString('latin1') === 'WEBP') return 'a WebP image';
  const text = head.toString('utf8').trimStart();
  if (text.startsWith('<svg') || text.startsWith('<?xml')) return 'an SVG/XML document';
  return 'not a PNG';
}

/**
 * Reads width and height from PNG bytes (at least the first 24). Returns a description of the
 * problem instead when the bytes are not a PNG or the header is truncated/corrupt.
 */
export function readPngSize(head: Buffer): PngSize | { problem: string } {
  if (head.length < 8 || !head.subarray(0, 8).equals(SIGNATURE)) {
    const what = sniff(head);
    return { problem: what === 'not a PNG' ? 'is not a PNG file (no PNG signature)' : `is ${what}, not a PNG` };
  }
  if (head.length < 24) return { problem: 'is a truncated PNG (no IHDR header)' };
  if (head.readUInt32BE(8) !== 13 || head.subarray(12, 16).toString('latin1') !== 'IHDR') return { problem: 'is a corrupt PNG (first chunk is not IHDR)' };
  const width = head.readUInt32BE(16);
  const height = head.readUInt32BE(20);
  if (width === 0 || height === 0) return { problem: `is a corrupt PNG (size ${width}x${height})` };
  return { width, height };
}

/** Reads the PNG size of a file; `{problem}` when it is not a readable PNG. */
export async function readPngFileSize(file: string): Promise<PngSize | { problem: string }> {
  let fh;
  try {
    fh = await open(file, 'r');
    const buf = Buffer.alloc(24);
    const { bytesRead } = await fh.read(buf, 0, 24, 0);
    return readPngSize(buf.subarray(0, bytesRead));
  } catch (err) {
    return { problem: `cannot be read: ${(err as Error).message}` };
  } finally {
    await fh?.close();
  }
}

/**
 * Checks that `file` is a PNG of exactly `expected` pixels. Returns undefined when it is, or a
 * message (without the file name, which the caller reports as the location) naming the role, the
 * actual and the required size, or what the file is instead.
 */
export async function checkPngFile(file: string, expected: PngSize, role: string): Promise<string | undefined> {
  const size = await readPngFileSize(file);
  if ('problem' in size) return `${role} ${size.problem}; a ${expected.width}x${expected.height} PNG is required`;
  if (size.width !== expected.width || size.height !== expected.height)
    return `${role} is ${size.width}x${size.height} pixels; it must be ${expected.width}x${expected.height}`;
  return undefined;
}
