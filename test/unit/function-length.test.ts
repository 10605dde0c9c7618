import { describe, expect, it } from '@jest/globals';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';

/** Longest function body accepted, in lines (from the first line of the declaration to its closing brace, nested functions included). */
const MAX_LINES = 80;

/**
 * Functions still longer than MAX_LINES, as `file:name`. This list only shrinks: the test fails
 * when an entry is now short enough (remove it) or no longer exists.
 */
const ALLOWED_LONG: readonly string[] = [];

const ROOT = path.resolve(import.meta.dirname, '../..');
/** Code ajv generates ahead of time (`npm run gen:schemas`): not written by hand. */
const GENERATED = ['src/manifest/generated/', 'src/agent/generated/'];

interface LongFunction {
  /** `file:name`, as in ALLOWED_LONG. */
  id: string;
  line: number;
  lines: number;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? sourceFiles(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []))
    .sort();
}

/** The name a function is known by: its own, the variable or property it is assigned to, else `<enclosing>/<arrow>`. */
function nameOf(node: ts.FunctionLikeDeclaration, enclosing: string | undefined): string {
  if (node.name && (ts.isIdentifier(node.name) || ts.isStringLiteral(node.name) || ts.isPrivateIdentifier(node.name))) return node.name.text;
  if (ts.isConstructorDeclaration(node)) return 'constructor';
  const parent = node.parent;
  if (ts.isVariableDeclaration(parent) && ts.isIdentifier(parent.name)) return parent.name.text;
  if (ts.isPropertyAssignment(parent) && ts.isIdentifier(parent.name)) return parent.name.text;
  if (ts.isPropertyDeclaration(parent) && ts.isIdentifier(parent.name)) return parent.name.text;
  const kind = ts.isArrowFunction(node) ? '<arrow>' : '<function>';
  return enclosing ? `${enclosing}/${kind}` : kind;
}

function longFunctions(file: string): LongFunction[] {
  const rel = path.relative(ROOT, file).split(path.sep).join('/');
  const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
  const found: LongFunction[] = [];
  const visit = (node: ts.Node, enclosing: string | undefined): void => {
    let inner = enclosing;
    if (ts.isFunctionLike(node) && 'body' in node && node.body) {
      const fn = node as ts.FunctionLikeDeclaration;
      const name = nameOf(fn, enclosing);
      const first = source.getLineAndCharacterOfPosition(fn.getStart(source)).line;
      const last = source.getLineAndCharacterOfPosition(fn.getEnd()).line;
      const lines = last - first + 1;
      if (lines > MAX_LINES) found.push({ id: `${rel}:${name}`, line: first + 1, lines });
      inner = name;
    }
    ts.forEachChild(node, (child) => visit(child, inner));
  };
  visit(source, undefined);
  return found;
}

describe('function length in src/', () => {
  const all = sourceFiles(path.join(ROOT, 'src'))
    .filter((f) => !GENERATED.some((g) => path.relative(ROOT, f).split(path.sep).join('/').startsWith(g)))
    .flatMap(longFunctions);

  it(`has no function, method or arrow over ${MAX_LINES} lines outside the allow-list`, () => {
    const offenders = all.filter((f) => !ALLOWED_LONG.includes(f.id)).map((f) => `${f.id} (line ${f.line}, ${f.lines} lines)`);
    expect(offenders).toEqual([]);
  });

  it('allow-lists only functions that are still too long (split ones must leave the list)', () => {
    const stillLong = new Set(all.map((f) => f.id));
    expect(ALLOWED_LONG.filter((id) => !stillLong.has(id))).toEqual([]);
  });
});
