/**
 * The manifest loader's shortcuts give what the plain way gives: checkDocumentLimits makes the
 * JSON pointer of a value only when a problem names it (same problems, order and pointers as a
 * walk that builds every pointer); the flow-nesting bound counts `[` and `{` natively first; the
 * start lines of a text without document markers are found without splitting it into lines.
 */
import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { checkDocumentLimits, chunkStarts, flowNestingPast } from '../../src/manifest/load.js';
import { DEFAULT_LIMITS, type InputLimits } from '../../src/manifest/limits.js';

/** The walk with a pointer per value, as a reference. */
function reference(value: unknown, limits: InputLimits): { pointer: string; message: string }[] {
  const problems: { pointer: string; message: string }[] = [];
  const stack: { v: unknown; depth: number; ptr: string }[] = [{ v: value, depth: 0, ptr: '' }];
  let nodes = 0;
  let chars = 0;
  const esc = (k: string): string => k.replace(/~/g, '~0').replace(/\//g, '~1');
  while (stack.length > 0 && problems.length < 5) {
    const { v, depth, ptr } = stack.pop()!;
    if (++nodes > limits.maxNodes) {
      problems.push({ pointer: ptr, message: 'nodes' });
      break;
    }
    if (typeof v === 'string') {
      chars += v.length;
      if (v.length > limits.maxValueChars) problems.push({ pointer: ptr, message: 'value' });
    } else if (typeof v === 'number') {
      if (Number.isInteger(v) && !Number.isSafeInteger(v)) problems.push({ pointer: ptr, message: 'integer' });
    } else if (v !== null && typeof v === 'object') {
      if (depth >= limits.maxDepth) {
        problems.push({ pointer: ptr, message: 'depth' });
        continue;
      }
      const entries: [string, unknown][] = Array.isArray(v) ? v.map((x, i) => [String(i), x]) : Object.entries(v);
      for (let i = entries.length - 1; i >= 0; i--) {
        const [k, x] = entries[i]!;
        if (!Array.isArray(v)) {
          chars += k.length;
          if (k.length > limits.maxKeyChars) {
            problems.push({ pointer: ptr, message: 'key' });
            continue;
          }
        }
        stack.push({ v: x, depth: depth + 1, ptr: `${ptr}/${esc(k)}` });
      }
    }
    if (chars > limits.maxDocumentChars) {
      problems.push({ pointer: '', message: 'document' });
      break;
    }
  }
  return problems;
}

/** The message's kind, as the reference names it. */
function kindOf(message: string): string {
  if (message.includes('maxNodes')) return 'nodes';
  if (message.includes('maxValueChars')) return 'value';
  if (message.includes('2^53')) return 'integer';
  if (message.includes('maxDepth')) return 'depth';
  if (message.includes('maxKeyChars')) return 'key';
  return 'document';
}

describe('document limits: pointers made only for problems', () => {
  it('names the value at fault with an escaped pointer', () => {
    const limits = { ...DEFAULT_LIMITS, maxValueChars: 3 };
    const problems = checkDocumentLimits({ spec: { 'a/b~c': ['ok', 'too long'] } }, limits);
    expect(problems.map((p) => p.pointer)).toEqual(['/spec/a~1b~0c/1']);
  });

  it('finds the same problems, in the same order, at the same pointers as a walk that builds every pointer', () => {
    const limits: InputLimits = { ...DEFAULT_LIMITS, maxNodes: 40, maxDepth: 3, maxValueChars: 4, maxKeyChars: 3, maxDocumentChars: 60 };
    const key = fc.constantFrom('a', 'b/c', '~', 'long-key', 'x', '0');
    const leaf = fc.oneof(fc.constantFrom('ok', 'too long', 2 ** 53 + 2, 1, null, true));
    const doc = fc.letrec((tie) => ({
      node: fc.oneof({ depthSize: 'small' }, leaf, fc.array(tie('node'), { maxLength: 4 }), fc.dictionary(key, tie('node'), { maxKeys: 4 })),
    })).node;
    fc.assert(
      fc.property(doc, (v) => {
        const got = checkDocumentLimits(v, limits).map((p) => ({ pointer: p.pointer, message: kindOf(p.message) }));
        expect(got).toEqual(reference(v, limits));
      }),
      { numRuns: 500 },
    );
  });
});

describe('flow nesting bound: native count first, scan only past it', () => {
  it('finds the first opener past the bound, and nothing in texts with few or only quoted openers', () => {
    expect(flowNestingPast('a: [[[x]]]', 3)).toBe(-1);
    expect(flowNestingPast('a: [[[[x]]]]', 3)).toBe(6);
    expect(flowNestingPast('a: {b: [c, {d: 1}]}', 3)).toBe(-1);
    // More openers than the bound, but in quotes and comments: the scan still runs and finds no depth.
    expect(flowNestingPast('a: "[[[[[[" # {{{{{{\nb: [1]', 3)).toBe(-1);
    expect(flowNestingPast('a: [1]\nb: [2]\nc: [3]\nd: [4]\ne: [[[[5]]]]', 3)).toBe(34);
  });
});

/** chunkStarts splitting every text into lines, as a reference. */
function referenceStarts(text: string): number[] {
  const starts: number[] = [];
  let inChunk = false;
  text.split('\n').forEach((line, i) => {
    if (/^---(\s|$)/.test(line)) {
      inChunk = false;
      if (/^---\s+\S/.test(line) && !/^---\s+#/.test(line)) {
        starts.push(i + 1);
        inChunk = true;
      }
      return;
    }
    if (/^\.\.\.(\s|$)/.test(line)) {
      inChunk = false;
      return;
    }
    if (!inChunk && line.trim() !== '' && !/^\s*#/.test(line) && !line.startsWith('%')) {
      starts.push(i + 1);
      inChunk = true;
    }
  });
  return starts;
}

describe('document start lines: one-document texts without splitting', () => {
  it('gives the start lines of the line-by-line reading, with and without markers', () => {
    const line = fc.constantFrom('', '  ', '# c', '%YAML 1.2', 'a: 1', '  b: 2', '---', '--- x', '--- # c', '---x', '...', '....', '\r', 'k: ---');
    fc.assert(fc.property(fc.array(line, { maxLength: 8 }), (lines) => expect(chunkStarts(lines.join('\n'))).toEqual(referenceStarts(lines.join('\n')))), { numRuns: 2000 });
    expect(chunkStarts('# head\n\nkind: Module\n')).toEqual([3]);
    expect(chunkStarts('# only a comment\n')).toEqual([]);
  });
});
