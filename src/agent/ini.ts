/**
 * A small INI reader for `eventsgw.conf`, compatible with what Python's configparser accepts for
 * it: `[section]` headers, `key = value` (or `key: value` when the line has no `=`), `#` and `;`
 * full-line comments, indented continuation lines appended to the previous value with a newline.
 * Keys are kept as written (channel names are case-sensitive). Every problem is reported with its
 * line number; the entries that parsed are still returned.
 */

/** One `key = value` entry. */
export interface IniEntry {
  key: string;
  value: string;
  line: number;
}

/** Parsed file: sections in order (entries keep file order) and problems. */
export interface IniDocument {
  sections: Map<string, IniEntry[]>;
  errors: string[];
}

/** Parses INI text; `file` names the source in error messages. */
export function parseIni(text: string, file = 'ini'): IniDocument {
  const sections = new Map<string, IniEntry[]>();
  const errors: string[] = [];
  let current: IniEntry[] | undefined;
  let currentName = '';
  let last: IniEntry | undefined;
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, i) => {
    const n = i + 1;
    if (/^\s*([#;].*)?$/.test(raw)) {
      if (raw.trim() === '') last = undefined;
      return;
    }
    if (/^\s/.test(raw) && last) {
      last.value += '\n' + raw.trim();
      return;
    }
    const line = raw.trim();
    const header = /^\[([^\]]+)\]$/.exec(line);
    if (header) {
      currentName = (header[1] as string).trim();
      if (sections.has(currentName)) errors.push(`${file}:${n}: section [${currentName}] appears twice`);
      current = sections.get(currentName) ?? [];
      sections.set(currentName, current);
      last = undefined;
      return;
    }
    let at = line.indexOf('=');
    if (at < 0) at = line.indexOf(':');
    if (at <= 0) {
      errors.push(`${file}:${n}: expected "key = value" or "[section]", got ${JSON.stringify(line.slice(0, 80))}`);
      last = undefined;
      return;
    }
    if (!current) {
      errors.push(`${file}:${n}: "${line.slice(0, at).trim()}" is outside any [section]`);
      last = undefined;
      return;
    }
    const key = line.slice(0, at).trim();
    if (current.some((e) => e.key === key)) {
      errors.push(`${file}:${n}: key ${JSON.stringify(key)} appears twice in [${currentName}]`);
      last = undefined;
      return;
    }
    last = { key, value: line.slice(at + 1).trim(), line: n };
    current.push(last);
  });
  return { sections, errors };
}
