/**
 * docs/errors.md is the registry of error codes: every code src/ throws is listed there, once,
 * with its exit code. Found by reading the sources (no compiler): the literal first argument of
 * the error classes that take a code, the codes of the classes with a fixed one, the command
 * runner's stderr table and the node agent's blocked-step and refusal codes.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { REASONS, reasonOfCode, TERMINAL_REASONS } from '../../src/node-agent/reasons.js';

/** Classes whose first constructor argument is the code. */
const CODE_FIRST = /new (?:Ns8ctlError|AgentError|RedisError|RefusedError|RepositoryError|CommandFailedError|InputError)\(\s*'([A-Za-z][A-Za-z0-9_]*)'/g;
/** The codes of the classes that set their own (UsageError, ManifestError, ...) and of toNs8ctlError. */
const FIXED = /\bsuper\(\s*'([a-z][a-z0-9_]*)'|new Ns8ctlError\('([a-z_]+)', message/g;
/** `{ pattern: /.../, code: 'image_not_found' }` (runner), `blocked: { code: 'x'` and `refuse('x'` (node agent). */
const TABLES = /\bcode: '([A-Za-z][A-Za-z0-9_]*)'|\brefuse\('([A-Za-z][A-Za-z0-9_]*)'/g;

async function sources(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory() && e.name !== 'generated') out.push(...(await sources(p)));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** Code -> first file throwing it. */
async function codesInSource(): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  for (const file of await sources('src')) {
    const text = await fs.readFile(file, 'utf8');
    const tables = file.endsWith(path.join('host', 'runner.ts')) || file.includes(`${path.sep}node-agent${path.sep}`);
    for (const re of tables ? [CODE_FIRST, FIXED, TABLES] : [CODE_FIRST, FIXED]) {
      for (const m of text.matchAll(re)) {
        const code = m.slice(1).find((g) => g !== undefined) as string;
        if (!found.has(code)) found.set(code, file);
      }
    }
  }
  return found;
}

async function documented(): Promise<{ code: string; exit: string }[]> {
  const text = await fs.readFile('docs/errors.md', 'utf8');
  return [...text.matchAll(/^\| `([^`]+)` \| ([^|]+) \|/gm)].map((m) => ({ code: m[1] as string, exit: (m[2] as string).trim() }));
}

describe('error code registry (docs/errors.md)', () => {
  it('lists every error code src/ throws', async () => {
    const found = await codesInSource();
    expect(found.size).toBeGreaterThan(100);
    expect([...found.keys()]).toEqual(expect.arrayContaining(['usage', 'manifest_invalid', 'redis_unreachable', 'image_not_found', 'rootfull_changed', 'update_refused', 'command_failed']));
    const listed = new Set((await documented()).map((d) => d.code));
    const missing = [...found].filter(([code]) => !listed.has(code)).map(([code, file]) => `${code} (${file})`);
    expect(missing).toEqual([]);
  });

  it('names every code in snake_case (status reasons are PascalCase, derived from the code)', async () => {
    const notSnake = [...(await codesInSource())].filter(([code]) => !/^[a-z][a-z0-9]*(_[a-z0-9]+)*$/.test(code)).map(([code, file]) => `${code} (${file})`);
    expect(notSnake).toEqual([]);
  });

  it('lists each code once, with an exit code', async () => {
    const rows = await documented();
    const seen = new Set<string>();
    const twice = rows.filter((r) => seen.size === seen.add(r.code).size).map((r) => r.code);
    expect(twice).toEqual([]);
    expect(rows.filter((r) => !/^(\d+|the task's)$/.test(r.exit)).map((r) => r.code)).toEqual([]);
  });

  it('gives each node agent code the status reason REASONS derives from it, terminal ones in bold', async () => {
    const text = await fs.readFile('docs/errors.md', 'utf8');
    const section = text.slice(text.indexOf('## node-agent/'), text.indexOf('## controller/'));
    const rows = [...section.matchAll(/^\| `([a-z0-9_]+)` \| \d+ \| ([^|]+) \|/gm)].map((m) => ({ code: m[1] as string, shown: (m[2] as string).trim() }));
    expect(rows.length).toBeGreaterThan(20);
    const wrong = rows.filter(({ code, shown }) => {
      const reason = reasonOfCode(code);
      return shown !== (TERMINAL_REASONS.has(reason) ? `**${reason}**` : reason);
    });
    expect(wrong).toEqual([]);
    const named = Object.keys(REASONS).filter((code) => !section.includes(`\`${code}\``));
    expect(named).toEqual([]);
  });
});
