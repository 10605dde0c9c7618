/**
 * Reading manifests: `-f` paths (files, directories, `-` for stdin) into parsed YAML documents
 * that keep their syntax tree and line counter, so later stages can point at line:col.
 */
import { readFileSync, realpathSync, type Dirent } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import jsyaml from 'js-yaml';
import { LineCounter, isScalar, parseAllDocuments } from 'yaml';
import type { Document } from 'yaml';
import { ManifestError, type Diagnostic } from '../errors.js';
import type { SourceRef } from './types.js';

/** File name endings read from directories. A file named explicitly is read whatever its name. */
export const MANIFEST_EXTENSIONS = ['.yaml', '.yml', '.json'] as const;

/** One non-empty YAML/JSON document, parsed. */
export interface LoadedDocument {
  source: SourceRef;
  /** Plain JS value of the document (`doc.toJS()`). */
  value: unknown;
  /** The YAML syntax tree, for mapping JSON pointers to positions (see `locate`). */
  doc: Document.Parsed;
  lineCounter: LineCounter;
}

/** What `loadManifests` read: the documents that parsed, and every problem met on the way. */
export interface LoadResult {
  documents: LoadedDocument[];
  /** Missing paths, unreadable files, YAML syntax errors. Documents with syntax errors are left out of `documents`. */
  diagnostics: Diagnostic[];
  /** Every path considered, in load order (`-` for stdin), including those that could not be read. */
  files: string[];
}

/** Options for `loadManifests`. */
export interface LoadOptions {
  /** Reads standard input for the path `-`. Default: read `process.stdin` to the end. */
  stdin?: () => Promise<string>;
}

async function readProcessStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer));
  return Buffer.concat(chunks).toString('utf8');
}

function diag(file: string, message: string, line = 0, col = 0, pointer = ''): Diagnostic {
  return { file, line, col, pointer, message };
}

function describeFsError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT') return 'no such file or directory';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EISDIR') return 'is a directory';
  return err instanceof Error ? err.message : String(err);
}

/**
 * Lists manifest files under a directory, recursively, skipping dot-entries, in byte order of path,
 * each with its real path (for reading a file reached twice once). Real paths come from the walk:
 * one realpath for the root and one per symbolic link, not one per file.
 */
async function listManifestFiles(dir: string, diagnostics: Diagnostic[]): Promise<{ file: string; real: string }[]> {
  const out: { file: string; real: string }[] = [];
  async function walk(d: string, realD: string): Promise<void> {
    let entries: Dirent[];
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch (err) {
      diagnostics.push(diag(d, `cannot read directory: ${describeFsError(err)}`));
      return;
    }
    const subdirs: [string, string][] = [];
    for (const entry of entries) {
      const name = entry.name;
      if (name.startsWith('.')) continue;
      const p = join(d, name);
      let isDir = entry.isDirectory();
      let isFile = entry.isFile();
      let real = join(realD, name);
      if (entry.isSymbolicLink()) {
        // Follow links like the files they point at.
        try {
          const st = await stat(p);
          isDir = st.isDirectory();
          isFile = st.isFile();
          real = realpathSync(p);
        } catch (err) {
          diagnostics.push(diag(p, `cannot read: ${describeFsError(err)}`));
          continue;
        }
      }
      if (isDir) subdirs.push([p, real]);
      else if (isFile && (MANIFEST_EXTENSIONS as readonly string[]).includes(extname(name).toLowerCase())) out.push({ file: p, real });
    }
    await Promise.all(subdirs.map(([p, real]) => walk(p, real)));
  }
  let realRoot = dir;
  try {
    realRoot = realpathSync(dir);
  } catch {
    // reported by the walk
  }
  await walk(dir, realRoot);
  return out.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
}

function isEmptyDocument(doc: Document.Parsed): boolean {
  const c = doc.contents;
  return c === null || (isScalar(c) && c.value === null);
}

/** Start line (1-based) of each `---`-separated chunk that has content, for the fast path. */
function chunkStarts(text: string): number[] {
  const starts: number[] = [];
  let inChunkWithContent = false;
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? '';
    if (/^---(\s|$)/.test(line)) {
      inChunkWithContent = false;
      if (/^---\s+\S/.test(line) && !/^---\s+#/.test(line)) {
        starts.push(i + 1);
        inChunkWithContent = true;
      }
      continue;
    }
    if (/^\.\.\.(\s|$)/.test(line)) {
      inChunkWithContent = false;
      continue;
    }
    if (!inChunkWithContent && line.trim() !== '' && !/^\s*#/.test(line) && !line.startsWith('%')) {
      starts.push(i + 1);
      inChunkWithContent = true;
    }
  }
  return starts;
}

/**
 * Fast path: js-yaml (core schema, which resolves scalars like the yaml library's YAML 1.2 core
 * schema) is about ten times faster than building the full syntax tree. The tree, needed only to
 * point at a line:col when something is wrong, is built lazily on first use. Returns undefined
 * when the fast parser objects or the document boundaries are unclear: the caller then takes the
 * precise path, which reports the problem with its position.
 */
function parseFast(file: string, text: string): LoadedDocument[] | undefined {
  let values: unknown[];
  try {
    values = jsyaml.loadAll(text, undefined, { schema: jsyaml.CORE_SCHEMA, json: false });
  } catch {
    return undefined;
  }
  const nonEmpty = values.map((v, i) => ({ v, i })).filter(({ v }) => v !== null && v !== undefined);
  const starts = chunkStarts(text);
  if (starts.length !== nonEmpty.length) return undefined;
  let tree: { docs: Document.Parsed[]; lineCounter: LineCounter } | undefined;
  const syntax = (): { docs: Document.Parsed[]; lineCounter: LineCounter } => {
    if (!tree) {
      const lineCounter = new LineCounter();
      const all = parseAllDocuments(text, { lineCounter, prettyErrors: false });
      tree = { docs: (Array.isArray(all) ? all : []).filter((d) => !isEmptyDocument(d)), lineCounter };
    }
    return tree;
  };
  return nonEmpty.map(({ v, i }, k) => ({
    source: { file, doc: i, line: starts[k] ?? 1, col: 1 },
    value: v,
    get doc(): Document.Parsed {
      const d = syntax().docs[k];
      if (!d) throw new ManifestError([diag(file, 'internal: document tree not found for position lookup')]);
      return d;
    },
    get lineCounter(): LineCounter {
      return syntax().lineCounter;
    },
  }));
}

/**
 * Parses the text of one file into its non-empty documents. Pure: no I/O.
 * Syntax errors and warnings (e.g. unresolved tags) become diagnostics with line:col; a document
 * with errors is not returned.
 */
export function parseManifestText(file: string, text: string): { documents: LoadedDocument[]; diagnostics: Diagnostic[] } {
  const fast = parseFast(file, text);
  if (fast) return { documents: fast, diagnostics: [] };
  return parseManifestTextPrecisely(file, text);
}

/** The precise path: the full syntax tree up front, every problem with its position. */
export function parseManifestTextPrecisely(file: string, text: string): { documents: LoadedDocument[]; diagnostics: Diagnostic[] } {
  const lineCounter = new LineCounter();
  const documents: LoadedDocument[] = [];
  const diagnostics: Diagnostic[] = [];
  const docs = parseAllDocuments(text, { lineCounter, prettyErrors: false });
  // parseAllDocuments returns an EmptyStream (no documents) for blank input.
  const list = Array.isArray(docs) ? docs : [];
  list.forEach((doc, index) => {
    const problems = [
      ...doc.errors.map((e) => ({ e, what: 'YAML syntax error' })),
      ...doc.warnings.map((e) => ({ e, what: 'YAML problem' })),
    ];
    for (const { e, what } of problems) {
      const pos = lineCounter.linePos(e.pos[0]);
      const first = e.message.split('\n')[0] ?? e.message;
      diagnostics.push(diag(file, `${what}: ${first}`, pos.line, pos.col));
    }
    if (problems.length > 0 || isEmptyDocument(doc)) return;
    const startOffset = doc.contents?.range?.[0] ?? doc.range[0];
    const pos = lineCounter.linePos(startOffset);
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: 100 });
    } catch (err) {
      diagnostics.push(diag(file, `YAML problem: ${err instanceof Error ? err.message : String(err)}`, pos.line, pos.col));
      return;
    }
    documents.push({ source: { file, doc: index, line: pos.line, col: pos.col }, value, doc, lineCounter });
  });
  return { documents, diagnostics };
}

/**
 * Loads manifests from `-f` paths, in the order given: a file (any name), a directory (recursive,
 * `*.yaml|*.yml|*.json`, dot-entries skipped, sorted by path), or `-` for standard input (read once).
 * A file reached twice (same real path) is read once. Never throws for bad input: missing paths,
 * unreadable files, an empty directory and YAML syntax errors are returned as diagnostics, all at once.
 */
export async function loadManifests(paths: string[], opts: LoadOptions = {}): Promise<LoadResult> {
  const documents: LoadedDocument[] = [];
  const diagnostics: Diagnostic[] = [];
  const files: string[] = [];
  const seen = new Set<string>();
  let stdinRead = false;

  const addText = (file: string, text: string): void => {
    const r = parseManifestText(file, text);
    documents.push(...r.documents);
    diagnostics.push(...r.diagnostics);
  };

  const readOneSync = (file: string, knownReal?: string): void => {
    let real = knownReal ?? file;
    if (knownReal === undefined) {
      try {
        real = realpathSync(file);
      } catch {
        // unreadable: reported when read
      }
    }
    if (seen.has(real)) return;
    seen.add(real);
    files.push(file);
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      diagnostics.push(diag(file, `cannot read file: ${describeFsError(err)}`));
      return;
    }
    addText(file, text);
  };


  for (const p of paths) {
    if (p === '-') {
      if (stdinRead) continue;
      stdinRead = true;
      files.push('-');
      let text: string;
      try {
        text = await (opts.stdin ?? readProcessStdin)();
      } catch (err) {
        diagnostics.push(diag('-', `cannot read standard input: ${describeFsError(err)}`));
        continue;
      }
      addText('-', text);
      continue;
    }
    let st;
    try {
      st = await stat(p);
    } catch (err) {
      files.push(p);
      diagnostics.push(diag(p, `cannot read -f ${p}: ${describeFsError(err)}`));
      continue;
    }
    if (st.isDirectory()) {
      const found = await listManifestFiles(p, diagnostics);
      if (found.length === 0) {
        diagnostics.push(diag(p, `directory has no manifest files (${MANIFEST_EXTENSIONS.map((e) => '*' + e).join(', ')})`));
      }
      // Synchronous reads: for many small files they cost a fraction of the promise API's
      // open/fstat/read/close round trips through the thread pool (measured in bench/run.ts).
      for (const f of found) readOneSync(f.file, f.real);
    } else {
      readOneSync(p);
    }
  }
  return { documents, diagnostics, files };
}
