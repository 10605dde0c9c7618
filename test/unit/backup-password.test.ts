/**
 * The rules of a backup destination's password (`ns8ctl backup set-password`): one trailing
 * newline stripped, 1 to 4096 UTF-8 bytes, one line, no NUL; refusals never quote the value.
 */
import type { RefusedError } from '../../src/errors.js';
import { checkBackupPassword, MAX_BACKUP_PASSWORD_BYTES } from '../../src/cli/commands/backup.js';

function refusal(raw: string): RefusedError {
  try {
    checkBackupPassword(raw);
  } catch (err) {
    return err as RefusedError;
  }
  throw new Error('the password was accepted');
}

describe('checkBackupPassword', () => {
  test('strips one trailing LF or CRLF, and only one', () => {
    expect(checkBackupPassword('s3cret\n')).toBe('s3cret');
    expect(checkBackupPassword('s3cret\r\n')).toBe('s3cret');
    expect(checkBackupPassword('  spaced s3cret  ')).toBe('  spaced s3cret  ');
    expect(refusal('s3cret\n\n').message).toContain('holds a line break before its end');
  });

  test('accepts exactly 4096 bytes and refuses 4097, counting UTF-8 bytes, not characters', () => {
    expect(checkBackupPassword('x'.repeat(MAX_BACKUP_PASSWORD_BYTES))).toHaveLength(4096);
    expect(refusal('x'.repeat(4097)).message).toContain('it is 4097 bytes long; at most 4096 bytes are allowed');
    // 2049 two-byte characters: 4098 bytes.
    expect(refusal('é'.repeat(2049)).message).toContain('it is 4098 bytes long');
  });

  test.each([
    ['', 'it is empty'],
    ['\n', 'it is empty'],
    ['Line-One-Secret\nLine-Two', 'holds a line break before its end'],
    ['Cr-Secret\rrest', 'holds a line break before its end'],
    ['Nul-Secret\0rest', 'holds a NUL character'],
  ])('refuses %j with backup_password_invalid, never quoting it', (raw, why) => {
    const err = refusal(raw);
    expect(err.code).toBe('backup_password_invalid');
    expect(err.message).toContain(why);
    expect(err.message).toContain('nothing was written');
    expect(err.message).not.toMatch(/Secret|Line-Two|rest/);
  });
});
