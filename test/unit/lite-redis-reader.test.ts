/** The RESP2 reader of the small Redis client: replies split anywhere between socket chunks read the same. */
import { INCOMPLETE, LiteReplyError, RespReader } from '../../src/state/lite-redis.js';

const WIRE = Buffer.from(
  [
    '+PONG\r\n',
    '-WRONGTYPE Operation against a key holding the wrong kind of value\r\n',
    ':-12\r\n',
    ':0\r\n',
    '$-1\r\n',
    '$0\r\n\r\n',
    `$${Buffer.byteLength('é✓\r\nx')}\r\né✓\r\nx\r\n`,
    '*-1\r\n',
    '*0\r\n',
    '*3\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n-ERR inner\r\n',
  ].join(''),
);
const EXPECTED = ['PONG', new LiteReplyError('WRONGTYPE Operation against a key holding the wrong kind of value'), -12, 0, null, '', 'é✓\r\nx', null, [], ['a', [1, null], new LiteReplyError('ERR inner')]];

function readAll(chunks: Buffer[]): unknown[] {
  const r = new RespReader();
  const out: unknown[] = [];
  for (const c of chunks) {
    r.push(c);
    for (let v = r.next(); v !== INCOMPLETE; v = r.next()) out.push(v);
  }
  return out;
}

describe('RESP2 reader', () => {
  test('reads every reply type, nested arrays, errors inside arrays and CRLF inside bulk strings', () => {
    const got = readAll([WIRE]);
    expect(got).toEqual(EXPECTED);
    expect(got[1]).toBeInstanceOf(LiteReplyError);
    expect((got[1] as Error).name).toBe('ReplyError');
  });

  test('gives the same replies whatever the chunk boundaries: one byte at a time, and split at every offset', () => {
    expect(readAll([...WIRE].map((b) => Buffer.from([b])))).toEqual(EXPECTED);
    for (let at = 1; at < WIRE.length; at++) expect(readAll([WIRE.subarray(0, at), WIRE.subarray(at)])).toEqual(EXPECTED);
  });

  test('says INCOMPLETE until the last byte of a reply has arrived', () => {
    const r = new RespReader();
    r.push(Buffer.from('$5\r\nhel'));
    expect(r.next()).toBe(INCOMPLETE);
    r.push(Buffer.from('lo\r'));
    expect(r.next()).toBe(INCOMPLETE);
    r.push(Buffer.from('\n'));
    expect(r.next()).toBe('hello');
    expect(r.next()).toBe(INCOMPLETE);
  });
});
