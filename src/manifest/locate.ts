/**
 * Maps a JSON pointer inside a parsed YAML document back to a line and column, so every
 * diagnostic points at the text the user wrote.
 */
import type { Document, LineCounter, Node as YamlNode, Pair } from 'yaml';
import { yamlSyntax } from './lazy-packages.js';

/** Where to point for a pointer: the value itself, or the key that holds it. */
export type LocateMode = 'value' | 'key';

/** A 1-based line/column position. */
export interface Position {
  line: number;
  col: number;
}

/** Splits a JSON pointer (`/spec/volumes/a~1b`) into unescaped segments. */
export function parsePointer(pointer: string): string[] {
  if (pointer === '') return [];
  return pointer
    .slice(1)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/** Escapes one segment for a JSON pointer (`a/b` -> `a~1b`). */
export function escapePointerSegment(segment: string): string {
  return segment.replace(/~/g, '~0').replace(/\//g, '~1');
}

function resolve(node: unknown, doc: Document.Parsed): unknown {
  let n = node;
  // Aliases may chain; bound the walk so a malformed document cannot loop.
  for (let i = 0; i < 100 && yamlSyntax().isAlias(n); i++) n = n.resolve(doc);
  return n;
}

function keyString(pair: Pair): string | undefined {
  const k = pair.key;
  if (yamlSyntax().isScalar(k)) return String(k.value);
  if (k === null || k === undefined) return undefined;
  return typeof k === 'object' ? undefined : String(k);
}

function start(node: unknown, lc: LineCounter): Position | undefined {
  // An empty value (`spec:` with nothing after it) has no text of its own to point at.
  if (yamlSyntax().isScalar(node) && node.value === null && !node.source) return undefined;
  if (node && typeof node === 'object' && 'range' in node) {
    const range = (node as YamlNode).range;
    if (range) return lc.linePos(range[0]);
  }
  return undefined;
}

/**
 * Line and column of the node a JSON pointer designates. With mode `value` (default) it is the
 * start of the value; with `key` it is the map key that holds the value (for "unknown field").
 * When a segment does not exist, the deepest existing ancestor is returned (its key when it has
 * one), which is what "missing field" diagnostics want. Never throws; falls back to the document
 * start, then to 1:1.
 */
export function locate(doc: Document.Parsed, lc: LineCounter, pointer: string, mode: LocateMode = 'value'): Position {
  const segments = parsePointer(pointer);
  let node: unknown = resolve(doc.contents, doc);
  let keyNode: unknown = undefined;
  const docStart = start(node, lc) ?? start(doc, lc) ?? { line: 1, col: 1 };
  let best: Position = docStart;
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i];
    let nextValue: unknown = undefined;
    let nextKey: unknown = undefined;
    let found = false;
    if (yamlSyntax().isMap(node)) {
      for (const item of node.items) {
        if (yamlSyntax().isPair(item) && keyString(item) === seg) {
          nextKey = item.key;
          nextValue = item.value;
          found = true;
          break;
        }
      }
    } else if (yamlSyntax().isSeq(node) && seg !== undefined && /^(0|[1-9][0-9]*)$/.test(seg)) {
      const item = node.items[Number(seg)];
      if (item !== undefined) {
        nextValue = item;
        found = true;
      }
    }
    if (!found) return best;
    const isLast = i === segments.length - 1;
    keyNode = nextKey;
    node = resolve(nextValue, doc);
    const keyPos = start(keyNode, lc);
    const valuePos = start(node, lc);
    if (isLast) {
      if (mode === 'key') return keyPos ?? valuePos ?? best;
      return valuePos ?? keyPos ?? best;
    }
    // For a missing child, the ancestor's key line (`spec:`) reads better than its first child.
    best = keyPos ?? valuePos ?? best;
  }
  return mode === 'key' ? (start(keyNode, lc) ?? best) : (start(node, lc) ?? best);
}
