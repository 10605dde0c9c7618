/**
 * Reading manifests: `-f` paths (files, directories, `-` for stdin) into parsed YAML documents
 * that keep their syntax tree and line counter, so later stages can point at line:col.
 */
import { opendirSync, realpathSync, type Dir, type Dirent } from 'node:fs';
import { stat } from 'node:fs/promises';
import { extname, isAbsolute, join, relative } from 'node:path';
import jsyaml from 'js-yaml';
import type { Document, LineCounter } from 'yaml';
import { ManifestError, type Diagnostic } from '../errors.js';
import { DEFAULT_LIMITS, describeBytes, type InputLimits } from './limits.js';
import { yamlSyntax } from './lazy-packages.js';
import { locate } from './locate.js';
import { InputError, describeFsError, fileKind, readBoundedFile, readBoundedStdin } from './read-input.js';
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
  /** Reads standard input for the path `-`. Default: read `process.stdin` to the end (bounded, strict UTF-8). */
  stdin?: () => Promise<string>;
  /** Narrower limits than DEFAULT_LIMITS (tests). */
  limits?: Partial<InputLimits>;
}

function diag(file: string, message: string, line = 0, col = 0, pointer = ''): Diagnostic {
  return { file, line, col, pointer, message };
}

const hasManifestExtension = (name: string): boolean => (MANIFEST_EXTENSIONS as readonly string[]).includes(extname(name).toLowerCase());

/** True when `real` is `root` or below it (both real paths). */
function isInside(root: string, real: string): boolean {
  const rel = relative(root, real);
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}

/**
 * A directory's entries, read synchronously as the caller asks for them (in batches, so a huge
 * directory is never held whole, and no promise per entry); closed at the end or when the
 * caller stops early.
 */
function* syncEntries(handle: Dir): Generator<Dirent> {
  try {
    for (let entry = handle.readSync(); entry !== null; entry = handle.readSync()) yield entry;
  } finally {
    handle.closeSync();
  }
}

/** Counters shared by every path of one load, checked against the limits. */
interface Budget {
  limits: InputLimits;
  files: number;
  entries: number;
  bytes: number;
  /** Set once a count limit stopped the load: nothing more is read. */
  stopped: boolean;
}

/**
 * Lists manifest files under a directory, skipping dot-entries, in byte order of path, each with
 * its real path (for reading a file reached twice once). Symbolic links are never followed to a
 * directory (two `ln -s . x` would make the walk exponential) and never out of the directory
 * given (a link to a password file must not be read, and so cannot be echoed); a link to a file
 * inside it is read like that file. Files that are not regular files (FIFOs, devices, sockets)
 * are refused, as are more files, entries or levels than the limits allow.
 */
async function listManifestFiles(dir: string, diagnostics: Diagnostic[], budget: Budget): Promise<{ file: string; real: string }[]> {
  const out: { file: string; real: string }[] = [];
  const { limits } = budget;
  let realRoot: string;
  try {
    realRoot = realpathSync(dir);
  } catch (err) {
    diagnostics.push(diag(dir, `cannot read directory: ${describeFsError(err)}`));
    return out;
  }
  const queue: { d: string; depth: number }[] = [{ d: dir, depth: 0 }];
  while (queue.length > 0 && !budget.stopped) {
    const { d, depth } = queue.shift()!;
    const realDir = join(realRoot, relative(dir, d)); // once per directory, not per file
    let handle;
    try {
      handle = opendirSync(d);
    } catch (err) {
      diagnostics.push(diag(d, `cannot read directory: ${describeFsError(err)}`));
      continue;
    }
    for (const entry of syncEntries(handle)) {
      if (++budget.entries > limits.maxEntries) {
        diagnostics.push(diag(dir, `more than ${limits.maxEntries} directory entries under ${dir}; the walk stopped there (limit maxEntries)`));
        budget.stopped = true;
        break;
      }
      const name = entry.name;
      if (name.startsWith('.')) continue;
      const p = join(d, name);
      if (entry.isSymbolicLink()) {
        let st;
        try {
          st = await stat(p);
        } catch (err) {
          if (hasManifestExtension(name)) diagnostics.push(diag(p, `cannot read: symbolic link to ${describeFsError(err)}`));
          continue;
        }
        if (st.isDirectory()) {
          diagnostics.push(diag(p, `symbolic link to a directory: not followed (links to directories can loop or leave ${dir}); give that directory with its own -f`));
          continue;
        }
        if (!hasManifestExtension(name)) continue;
        let real: string;
        try {
          real = realpathSync(p);
        } catch (err) {
          diagnostics.push(diag(p, `cannot read: ${describeFsError(err)}`));
          continue;
        }
        if (!isInside(realRoot, real)) {
          diagnostics.push(diag(p, `symbolic link points outside ${dir}: not read (a link may only point at a file inside the directory given with -f)`));
          continue;
        }
        if (!st.isFile()) {
          diagnostics.push(diag(p, `cannot read file: the link points at ${fileKind(st)}; only regular files are read`));
          continue;
        }
        out.push({ file: p, real });
      } else if (entry.isDirectory()) {
        if (depth + 1 > limits.maxDirectoryDepth) diagnostics.push(diag(p, `directory is more than ${limits.maxDirectoryDepth} levels below ${dir}; not read (limit maxDirectoryDepth)`));
        else queue.push({ d: p, depth: depth + 1 });
        continue;
      } else if (hasManifestExtension(name)) {
        if (!entry.isFile()) {
          diagnostics.push(diag(p, `cannot read file: it is ${entry.isFIFO() ? 'a FIFO (named pipe)' : entry.isSocket() ? 'a socket' : 'a device'}; only regular files are read`));
          continue;
        }
        out.push({ file: p, real: join(realDir, name) });
      } else continue;
      if (++budget.files > limits.maxFiles) {
        diagnostics.push(diag(dir, `more than ${limits.maxFiles} manifest files; none past the limit is read (limit maxFiles)`));
        budget.stopped = true;
        out.pop();
        break;
      }
    }
  }
  return out.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
}

function isEmptyDocument(doc: Document.Parsed): boolean {
  const c = doc.contents;
  return c === null || (yamlSyntax().isScalar(c) && c.value === null);
}

/** A line some line of a document marker (`---`, `...`) could be. */
const MARKER_LIKE = /(^|\n)(---|\.\.\.)/;

/** A line that gives its chunk content: not blank, not a comment, not a directive (`%YAML`). */
const isContentLine = (line: string): boolean => line.trim() !== '' && !/^\s*#/.test(line) && !line.startsWith('%');

/** Start line (1-based) of each `---`-separated chunk that has content, for the fast path. */
export function chunkStarts(text: string): number[] {
  // No line starts like a marker (the usual one-document file): the only start is the first
  // content line, found without splitting the whole text into lines.
  if (!MARKER_LIKE.test(text)) {
    for (let start = 0, i = 1; ; i++) {
      const end = text.indexOf('\n', start);
      if (isContentLine(end < 0 ? text.slice(start) : text.slice(start, end))) return [i];
      if (end < 0) return [];
      start = end + 1;
    }
  }
  const starts: number[] = [];
  let inChunkWithContent = false;
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? '';
    // Only lines starting with `-` or `.` can be markers: most lines skip both regex tests.
    const first = line.charCodeAt(0);
    if (first === 0x2d && /^---(\s|$)/.test(line)) {
      inChunkWithContent = false;
      if (/^---\s+\S/.test(line) && !/^---\s+#/.test(line)) {
        starts.push(i + 1);
        inChunkWithContent = true;
      }
      continue;
    }
    if (first === 0x2e && /^\.\.\.(\s|$)/.test(line)) {
      inChunkWithContent = false;
      continue;
    }
    if (!inChunkWithContent && isContentLine(line)) {
      starts.push(i + 1);
      inChunkWithContent = true;
    }
  }
  return starts;
}

/**
 * js-yaml's core schema with YAML 1.2 core integers: js-yaml also reads `0b1` as 1 (a YAML 1.1
 * form); YAML 1.2 core, which the precise path follows, reads it as the string "0b1".
 */
const CORE_1_2 = ((): jsyaml.Schema => {
  // js-yaml exports its built-in types at run time; its type declarations do not list them.
  const types = (jsyaml as unknown as { types: Record<'null' | 'bool' | 'int' | 'float', jsyaml.Type> }).types;
  const int = types.int as unknown as { resolve: (d: string | null) => boolean; construct: (d: string) => unknown; predicate: (o: unknown) => boolean; represent: unknown; defaultStyle: string };
  const strictInt = new jsyaml.Type('tag:yaml.org,2002:int', {
    kind: 'scalar',
    resolve: (d: string | null) => d !== null && !/^[-+]?0b/.test(d) && int.resolve(d),
    construct: (d: string) => int.construct(d),
    predicate: (o: unknown) => int.predicate(o),
    represent: int.represent as never,
    defaultStyle: int.defaultStyle,
  });
  return jsyaml.FAILSAFE_SCHEMA.extend({ implicit: [types.null, types.bool, strictInt, types.float] });
})();

/**
 * Text the fast path leaves to the precise one: anything that may hold an alias (`*name`), since
 * js-yaml has no alias limit and the precise path counts alias expansions (an alias bomb).
 */
const MAY_HOLD_ALIAS = /(^|[\s[{,:-])\*[^\s,\]}]/;

/**
 * Fast path: js-yaml (core schema, which resolves scalars like the yaml library's YAML 1.2 core
 * schema) is about ten times faster than building the full syntax tree. The tree, needed only to
 * point at a line:col when something is wrong, is built lazily on first use. Returns undefined
 * when the fast parser objects, the text may hold aliases, or the document boundaries are unclear:
 * the caller then takes the precise path, which reports the problem with its position.
 */
function parseFast(file: string, text: string): LoadedDocument[] | undefined {
  if (MAY_HOLD_ALIAS.test(text)) return undefined;
  let values: unknown[];
  try {
    values = jsyaml.loadAll(text, undefined, { schema: CORE_1_2, json: false });
  } catch {
    return undefined;
  }
  const nonEmpty = values.map((v, i) => ({ v, i })).filter(({ v }) => v !== null && v !== undefined);
  const starts = chunkStarts(text);
  if (starts.length !== nonEmpty.length) return undefined;
  let tree: { docs: Document.Parsed[]; lineCounter: LineCounter } | undefined;
  const syntax = (): { docs: Document.Parsed[]; lineCounter: LineCounter } => {
    if (!tree) {
      const { LineCounter, parseAllDocuments } = yamlSyntax();
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
 * Characters YAML 1.2 does not allow in a stream (outside its printable set: C0 controls but tab,
 * line feed and carriage return; DEL; C1 controls but NEL). Refused up front: the parsers let some
 * of them through into values.
 */
// eslint-disable-next-line no-control-regex
const CONTROL_CHARACTER = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u0084\u0086-\u009f]/;

/** The limits with a caller's narrowing applied. */
function limitsOf(given: Partial<InputLimits> | undefined): InputLimits {
  return given ? { ...DEFAULT_LIMITS, ...given } : DEFAULT_LIMITS;
}

/**
 * Problems of one parsed value against the document limits: nesting depth, number of values
 * (each alias use counted again), length of strings, keys and of all text together, and integers
 * that a JavaScript number cannot hold exactly (beyond 2^53 - 1, e.g. 9007199254740993, would be
 * stored as ...992). At most five problems, each with the JSON pointer of the value at fault.
 * Iterative and bounded by maxNodes, whatever the value's shape.
 */
export function checkDocumentLimits(value: unknown, limits: InputLimits = DEFAULT_LIMITS): { pointer: string; message: string }[] {
  const problems: { pointer: string; message: string }[] = [];
  // Each value's pointer is made only when a problem names it: for a valid document (nearly all
  // of them) no pointer text is built per value, and no [key, value] pair per member.
  const stack: Visit[] = [{ v: value, depth: 0, parent: undefined, key: '' }];
  let nodes = 0;
  let chars = 0;
  while (stack.length > 0 && problems.length < 5) {
    const visit = stack.pop()!;
    const { v, depth } = visit;
    if (++nodes > limits.maxNodes) {
      problems.push({ pointer: pointerOf(visit), message: `document has more than ${limits.maxNodes} values (aliases counted at each use); not read (limit maxNodes)` });
      break;
    }
    if (typeof v === 'string') {
      chars += v.length;
      if (v.length > limits.maxValueChars) problems.push({ pointer: pointerOf(visit), message: `value is ${v.length} characters long; at most ${limits.maxValueChars} per value (limit maxValueChars); not shown` });
    } else if (typeof v === 'number') {
      if (Number.isInteger(v) && !Number.isSafeInteger(v)) {
        problems.push({ pointer: pointerOf(visit), message: `integer is beyond 2^53 - 1 (9007199254740991) and cannot be stored exactly; integers must be between -9007199254740991 and 9007199254740991 (quote the value if it is text)` });
      }
    } else if (v !== null && typeof v === 'object') {
      if (depth >= limits.maxDepth) {
        problems.push({ pointer: pointerOf(visit), message: `nesting is deeper than ${limits.maxDepth} levels (limit maxDepth)` });
        continue;
      }
      if (Array.isArray(v)) {
        for (let i = v.length - 1; i >= 0; i--) stack.push({ v: v[i], depth: depth + 1, parent: visit, key: String(i) });
      } else {
        const keys = Object.keys(v);
        for (let i = keys.length - 1; i >= 0; i--) {
          const k = keys[i]!;
          chars += k.length;
          if (k.length > limits.maxKeyChars) {
            problems.push({ pointer: pointerOf(visit), message: `a key is ${k.length} characters long; at most ${limits.maxKeyChars} per key (limit maxKeyChars)` });
            continue;
          }
          stack.push({ v: (v as Record<string, unknown>)[k], depth: depth + 1, parent: visit, key: k });
        }
      }
    }
    if (chars > limits.maxDocumentChars) {
      problems.push({ pointer: '', message: `document holds more than ${limits.maxDocumentChars} characters of text (limit maxDocumentChars)` });
      break;
    }
  }
  return problems;
}

/** A value checkDocumentLimits has yet to look at: its parent and key make its JSON pointer. */
interface Visit {
  v: unknown;
  depth: number;
  parent: Visit | undefined;
  key: string;
}

/** The JSON pointer of a visited value (RFC 6901: `~` as `~0`, `/` as `~1`). */
function pointerOf(visit: Visit): string {
  const parts: string[] = [];
  for (let x: Visit | undefined = visit; x?.parent; x = x.parent) parts.push(x.key.replace(/~/g, '~0').replace(/\//g, '~1'));
  return parts.length ? '/' + parts.reverse().join('/') : '';
}

/**
 * Parses the text of one file into its non-empty documents. Pure: no I/O.
 * Syntax errors and warnings (e.g. unresolved tags) become diagnostics with line:col; a document
 * with errors, or over a limit (see checkDocumentLimits, InputLimits), is not returned.
 */
export function parseManifestText(file: string, text: string, opts: { limits?: Partial<InputLimits> } = {}): { documents: LoadedDocument[]; diagnostics: Diagnostic[] } {
  const limits = limitsOf(opts.limits);
  if (text.length > limits.maxFileBytes) return { documents: [], diagnostics: [diag(file, `text is ${text.length} characters; the limit is ${describeBytes(limits.maxFileBytes)} per file (limit maxFileBytes)`)] };
  const control = CONTROL_CHARACTER.exec(text);
  if (control) {
    const before = text.slice(0, control.index);
    const code = control[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, '0');
    return { documents: [], diagnostics: [diag(file, `YAML problem: control character U+${code} is not allowed in YAML text (write it as an escape in a double-quoted string)`, before.split('\n').length, control.index - before.lastIndexOf('\n'))] };
  }
  const deep = flowNestingPast(text, limits.maxDepth);
  if (deep >= 0) {
    const before = text.slice(0, deep);
    const line = before.split('\n').length;
    return { documents: [], diagnostics: [diag(file, `YAML problem: [ and { nest deeper than ${limits.maxDepth} levels; not parsed (limit maxDepth)`, line, deep - before.lastIndexOf('\n'))] };
  }
  const fast = parseFast(file, text);
  const parsed = fast ? { documents: fast, diagnostics: [] } : parsePrecisely(file, text, limits);
  const documents: LoadedDocument[] = [];
  const diagnostics = [...parsed.diagnostics];
  for (const d of parsed.documents) {
    const problems = checkDocumentLimits(d.value, limits);
    if (problems.length === 0) {
      documents.push(d);
      continue;
    }
    for (const p of problems) {
      let pos = { line: d.source.line, col: d.source.col };
      try {
        pos = locate(d.doc, d.lineCounter, p.pointer, 'value');
      } catch {
        // the document start is a good enough place
      }
      diagnostics.push({ file, line: pos.line, col: pos.col, pointer: p.pointer, message: p.message });
    }
  }
  return { documents, diagnostics };
}

/**
 * Offset where flow collections (`[`, `{`) nest deeper than `max`, outside quoted scalars and
 * comments, or -1. A linear scan run before parsing: both parsers recurse per level, so a text of
 * a hundred thousand `[` would otherwise cost seconds and a stack overflow.
 */
export function flowNestingPast(text: string, max: number): number {
  // Depth grows only at a `[` or `{`: a text with at most `max` of them (every manifest but a
  // pathological one) cannot nest deeper, which native searches tell without the scan below.
  let openers = 0;
  for (const c of ['[', '{']) {
    for (let i = text.indexOf(c); i >= 0 && openers <= max; i = text.indexOf(c, i + 1)) openers++;
  }
  if (openers <= max) return -1;
  let depth = 0;
  let quote = '';
  let prev = '\n';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quote) {
      if (c === '\\' && quote === '"') i++;
      else if (c === quote) {
        if (quote === "'" && text[i + 1] === "'") i++;
        else quote = '';
      }
      prev = c;
      continue;
    }
    const atTokenStart = prev === '\n' || prev === ' ' || prev === '\t' || prev === '[' || prev === '{' || prev === ',' || prev === ':';
    if ((c === '"' || c === "'") && atTokenStart) quote = c;
    else if (c === '#' && (prev === ' ' || prev === '\t' || prev === '\n')) {
      const nl = text.indexOf('\n', i);
      if (nl < 0) return -1;
      i = nl;
      prev = '\n';
      continue;
    } else if (c === '[' || c === '{') {
      if (++depth > max) return i;
    } else if ((c === ']' || c === '}') && depth > 0) depth--;
    prev = c;
  }
  return -1;
}

/** The precise path, bounded: see parseManifestTextPrecisely. */
function parsePrecisely(file: string, text: string, limits: InputLimits): { documents: LoadedDocument[]; diagnostics: Diagnostic[] } {
  try {
    return parseManifestTextPrecisely(file, text, limits.maxAliases);
  } catch (err) {
    // The parser recurses per nesting level: a document nested thousands deep overflows the stack.
    if (err instanceof RangeError) return { documents: [], diagnostics: [diag(file, `YAML problem: nesting is too deep to parse; at most ${limits.maxDepth} levels (limit maxDepth)`, 1, 1)] };
    throw err;
  }
}

/**
 * The precise path: the full syntax tree up front, every problem with its position. Aliases are
 * expanded at most `maxAliases` times per document (an alias bomb is refused, not expanded).
 */
export function parseManifestTextPrecisely(file: string, text: string, maxAliases: number = DEFAULT_LIMITS.maxAliases): { documents: LoadedDocument[]; diagnostics: Diagnostic[] } {
  const { LineCounter, parseAllDocuments } = yamlSyntax();
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
      value = doc.toJS({ maxAliasCount: maxAliases });
    } catch (err) {
      if (err instanceof RangeError) throw err;
      const m = err instanceof Error ? err.message : String(err);
      const named = /alias/i.test(m) ? `${m} (limit maxAliases: ${maxAliases})` : m;
      diagnostics.push(diag(file, `YAML problem: ${named}`, pos.line, pos.col));
      return;
    }
    documents.push({ source: { file, doc: index, line: pos.line, col: pos.col }, value, doc, lineCounter });
  });
  return { documents, diagnostics };
}

/**
 * Loads manifests from `-f` paths, in the order given: a file (any name), a directory (`*.yaml|*.yml|*.json`,
 * dot-entries skipped, sorted by path, links followed only to files inside it), or `-` for standard
 * input (read once). A file reached twice (same real path) is read once. Only regular files are
 * read, each within the limits (InputLimits, DEFAULT_LIMITS), as strict UTF-8. Never throws for
 * bad input: missing paths, unreadable or special files, links out of a directory, limits,
 * invalid UTF-8 and YAML errors are returned as diagnostics, all at once.
 */
export async function loadManifests(paths: string[], opts: LoadOptions = {}): Promise<LoadResult> {
  const reader = new ManifestReader(limitsOf(opts.limits), opts.stdin);
  for (const p of paths) {
    if (reader.budget.stopped) break;
    if (p === '-') await reader.readStdin();
    else await reader.readPath(p);
  }
  return { documents: reader.documents, diagnostics: reader.diagnostics, files: reader.files };
}

/** What loadManifests has read so far, within one budget. */
class ManifestReader {
  readonly documents: LoadedDocument[] = [];
  readonly diagnostics: Diagnostic[] = [];
  readonly files: string[] = [];
  readonly budget: Budget;
  private readonly seen = new Set<string>();
  private stdinRead = false;

  constructor(
    private readonly limits: InputLimits,
    private readonly stdin: LoadOptions['stdin'],
  ) {
    this.budget = { limits, files: 0, entries: 0, bytes: 0, stopped: false };
  }

  /** Standard input, read once whatever the number of `-`. */
  async readStdin(): Promise<void> {
    if (this.stdinRead) return;
    this.stdinRead = true;
    this.files.push('-');
    let text: string;
    try {
      text = await (this.stdin ?? (() => readBoundedStdin(this.limits.maxFileBytes)))();
    } catch (err) {
      if (err instanceof InputError) this.diagnostics.push(diag('-', err.message, err.line, err.col));
      else this.diagnostics.push(diag('-', `cannot read standard input: ${describeFsError(err)}`));
      return;
    }
    if (this.account('-', Buffer.byteLength(text))) this.addText('-', text);
  }

  /** A `-f` path: a directory's manifest files, or a regular file; anything else is a diagnostic. */
  async readPath(p: string): Promise<void> {
    let st;
    try {
      st = await stat(p);
    } catch (err) {
      this.files.push(p);
      this.diagnostics.push(diag(p, `cannot read -f ${p}: ${describeFsError(err)}`));
      return;
    }
    if (st.isDirectory()) await this.readDirectory(p);
    else if (!st.isFile()) {
      // Checked before opening: opening a FIFO waits for a writer, reading /dev/zero never ends.
      this.files.push(p);
      this.diagnostics.push(diag(p, `cannot read -f ${p}: it is ${fileKind(st)}; only regular files, directories and - (standard input) are read`));
    } else {
      this.readFile(p);
    }
  }

  private async readDirectory(p: string): Promise<void> {
    const found = await listManifestFiles(p, this.diagnostics, this.budget);
    if (found.length === 0 && !this.budget.stopped) {
      this.diagnostics.push(diag(p, `directory has no manifest files (${MANIFEST_EXTENSIONS.map((e) => '*' + e).join(', ')})`));
    }
    // Synchronous reads: for many small files they cost a fraction of the promise API's
    // open/fstat/read/close round trips through the thread pool (measured in bench/run.ts).
    for (const f of found) {
      if (this.budget.stopped) break;
      this.readFile(f.file, f.real);
    }
  }

  /** Reads one file unless its real path was read already. */
  private readFile(file: string, knownReal?: string): void {
    let real = knownReal ?? file;
    if (knownReal === undefined) {
      try {
        real = realpathSync(file);
      } catch {
        // unreadable: reported when read
      }
    }
    if (this.seen.has(real)) return;
    this.seen.add(real);
    this.files.push(file);
    const r = readBoundedFile(file, this.limits.maxFileBytes);
    if (!r.ok) {
      this.diagnostics.push(diag(file, r.message, r.line, r.col));
      return;
    }
    if (this.account(file, r.bytes)) this.addText(file, r.text);
  }

  private addText(file: string, text: string): void {
    const r = parseManifestText(file, text, { limits: this.limits });
    this.documents.push(...r.documents);
    this.diagnostics.push(...r.diagnostics);
  }

  /** Counts bytes against maxTotalBytes; false (and a diagnostic) once they are over it. */
  private account(file: string, bytes: number): boolean {
    this.budget.bytes += bytes;
    if (this.budget.bytes <= this.limits.maxTotalBytes) return true;
    this.diagnostics.push(diag(file, `the files read so far hold more than ${describeBytes(this.limits.maxTotalBytes)}; this one and the rest are not read (limit maxTotalBytes)`));
    this.budget.stopped = true;
    return false;
  }
}
