import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkPngFile, readPngSize } from '../../src/repository/png.js';
import { JPEG_HEAD, makePng } from '../fixtures/repodata/png.js';

describe('readPngSize', () => {
  it('reads width and height from the IHDR chunk', () => {
    expect(readPngSize(makePng(256, 256))).toEqual({ width: 256, height: 256 });
    expect(readPngSize(makePng(1024, 768))).toEqual({ width: 1024, height: 768 });
    expect(readPngSize(makePng(3, 70000))).toEqual({ width: 3, height: 70000 });
  });

  it('names what a non-PNG file is', () => {
    expect(readPngSize(JPEG_HEAD)).toEqual({ problem: 'is a JPEG image, not a PNG' });
    expect(readPngSize(Buffer.from('GIF89a......'))).toEqual({ problem: 'is a GIF image, not a PNG' });
    expect(readPngSize(Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"/>'))).toEqual({ problem: 'is an SVG/XML document, not a PNG' });
    expect(readPngSize(Buffer.alloc(0))).toEqual({ problem: 'is an empty file, not a PNG' });
    expect(readPngSize(Buffer.from('hello world, this is text'))).toEqual({ problem: 'is not a PNG file (no PNG signature)' });
  });

  it('recognises a truncated or corrupt header', () => {
    expect(readPngSize(makePng(10, 10).subarray(0, 20))).toEqual({ problem: 'is a truncated PNG (no IHDR header)' });
    const corrupt = Buffer.from(makePng(10, 10));
    corrupt.write('IDAT', 12, 'latin1');
    expect(readPngSize(corrupt)).toEqual({ problem: 'is a corrupt PNG (first chunk is not IHDR)' });
  });
});

describe('checkPngFile', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'ns8ctl-png-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('accepts a PNG of exactly the required size', async () => {
    writeFileSync(join(dir, 'ok.png'), makePng(256, 256));
    await expect(checkPngFile(join(dir, 'ok.png'), { width: 256, height: 256 }, 'logo')).resolves.toBeUndefined();
  });

  it('reports the actual and the required size', async () => {
    writeFileSync(join(dir, 'big.png'), makePng(512, 512));
    await expect(checkPngFile(join(dir, 'big.png'), { width: 256, height: 256 }, 'logo')).resolves.toBe('logo is 512x512 pixels; it must be 256x256');
  });

  it('reports a file that is not a PNG', async () => {
    writeFileSync(join(dir, 'shot.png'), JPEG_HEAD);
    await expect(checkPngFile(join(dir, 'shot.png'), { width: 1024, height: 768 }, 'screenshot')).resolves.toBe('screenshot is a JPEG image, not a PNG; a 1024x768 PNG is required');
  });

  it('reports a missing file', async () => {
    await expect(checkPngFile(join(dir, 'missing.png'), { width: 1, height: 1 }, 'logo')).resolves.toMatch(/^logo cannot be read: ENOENT/);
  });
});
