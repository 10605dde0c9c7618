/**
 * The layers of src/ (docs/architecture.md): every import points to its own folder, its own layer
 * or a lower one, and no two folders of src/ import each other, directly or around a loop. The
 * layer table is the one eslint.config.js enforces; this test also sees dynamic `import()` and
 * re-exports, and it fails when a new folder is not placed in a layer.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const SRC = path.resolve('src');

/** `from '...'`, `import '...'`, `import('...')`: every way a module names another. */
const SPECIFIER = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)(['"])(\.{1,2}\/[^'"\n]+)\1/g;

interface Edge {
  from: string;
  to: string;
  /** `src/state/read-state.ts -> src/plan/types.ts`, for the failure message. */
  example: string;
}

async function tsFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await tsFiles(p)));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out.sort();
}

/** The top folder of src/ a path is in; `.` for files directly in src/ (errors.ts). */
function folderOf(file: string): string {
  const rel = path.relative(SRC, file).split(path.sep);
  return rel.length > 1 ? (rel[0] as string) : '.';
}

/** Every relative import between two different folders of src/, read with a regex (no compiler). */
async function folderEdges(): Promise<Edge[]> {
  const edges: Edge[] = [];
  for (const file of await tsFiles(SRC)) {
    const text = await fs.readFile(file, 'utf8');
    for (const m of text.matchAll(SPECIFIER)) {
      const target = path.resolve(path.dirname(file), m[2] as string);
      if (!target.startsWith(SRC + path.sep)) continue;
      const from = folderOf(file);
      const to = folderOf(target);
      if (from !== to) edges.push({ from, to, example: `${path.relative('.', file)} -> ${path.relative('.', target)}` });
    }
  }
  return edges;
}

/** Folder loops of a graph as `a -> b -> a`: one per back edge of a depth-first search (none when acyclic). */
function folderCycles(graph: ReadonlyMap<string, ReadonlySet<string>>): string[][] {
  const cycles: string[][] = [];
  const seen = new Set<string>();
  const done = new Set<string>();
  const stack: string[] = [];
  const visit = (n: string): void => {
    seen.add(n);
    stack.push(n);
    for (const m of [...(graph.get(n) ?? [])].sort()) {
      if (!seen.has(m)) visit(m);
      else if (!done.has(m)) cycles.push([...stack.slice(stack.indexOf(m)), m]);
    }
    stack.pop();
    done.add(n);
  };
  for (const n of [...graph.keys()].sort()) if (!seen.has(n)) visit(n);
  return cycles;
}

function graphOf(edges: readonly Edge[]): Map<string, Set<string>> {
  const g = new Map<string, Set<string>>();
  for (const e of edges) {
    if (!g.has(e.from)) g.set(e.from, new Set());
    g.get(e.from)?.add(e.to);
  }
  return g;
}

/** Imports that load code at run time: not `import type`/`export type` (erased), not `import()` (lazy). */
const STATIC_IMPORT = /^\s*(?:import|export)\s+(?!type\b)(?:[^;'"]*?\sfrom\s*)?(['"])(\.{1,2}\/[^'"\n]+)\1/gm;

/** The src/ folders a module loads when it is imported, following static imports only. */
async function foldersLoadedBy(entry: string): Promise<string[]> {
  const seen = new Set<string>();
  const todo = [path.resolve(entry)];
  while (todo.length > 0) {
    const file = todo.pop() as string;
    if (seen.has(file)) continue;
    seen.add(file);
    const text = await fs.readFile(file, 'utf8');
    for (const m of text.matchAll(STATIC_IMPORT)) todo.push(path.resolve(path.dirname(file), (m[2] as string).replace(/\.js$/, '.ts')));
  }
  return [...new Set([...seen].map(folderOf))].sort();
}

async function layerTable(): Promise<string[][]> {
  const mod = (await import(pathToFileURL(path.resolve('eslint.config.js')).href)) as { LAYERS: string[][] };
  return mod.LAYERS;
}

describe('layers of src/', () => {
  it('finds a loop between two folders and one around three', () => {
    const g = new Map([
      ['a', new Set(['b'])],
      ['b', new Set(['a', 'c'])],
      ['c', new Set(['d'])],
      ['d', new Set(['e'])],
      ['e', new Set(['c'])],
    ]);
    expect(folderCycles(g)).toEqual([
      ['a', 'b', 'a'],
      ['c', 'd', 'e', 'c'],
    ]);
    expect(folderCycles(new Map([['a', new Set(['b'])], ['b', new Set(['c'])]]))).toEqual([]);
  });

  it('has no import loop between folders', async () => {
    const edges = await folderEdges();
    expect(edges.length).toBeGreaterThan(100);
    const loops = folderCycles(graphOf(edges)).map((c) =>
      c
        .slice(1)
        .map((to, i) => edges.find((e) => e.from === c[i] && e.to === to)?.example)
        .join('; '),
    );
    expect(loops).toEqual([]);
  });

  it('places every folder of src/ in one layer', async () => {
    const layers = await layerTable();
    const placed = layers.flat();
    expect(new Set(placed).size).toBe(placed.length);
    const folders = (await fs.readdir(SRC, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name);
    expect(folders.filter((f) => !placed.includes(f))).toEqual([]);
  });

  it('imports only its own layer or lower ones (dynamic imports and re-exports included)', async () => {
    const layers = await layerTable();
    const rank = (folder: string): number => (folder === '.' ? 0 : layers.findIndex((l) => l.includes(folder)));
    const upward = (await folderEdges()).filter((e) => rank(e.to) > rank(e.from)).map((e) => e.example);
    expect(upward).toEqual([]);
  });
  it('loads no agent, node agent, controller or sandbox code for `ns8ctl diff` and `apply`', async () => {
    const loaded = await foldersLoadedBy('src/cli/commands/plan-commands.ts');
    expect(loaded).toEqual(expect.arrayContaining(['apply', 'plan', 'state']));
    expect(loaded.filter((f) => ['agent', 'node-agent', 'controller', 'sandbox', 'demo'].includes(f))).toEqual([]);
  });
});
