import { createRequire } from 'node:module';
import type YAMLModule from 'yaml';
import { UsageError } from '../errors.js';

/** Output formats of read commands. */
export type OutputFormat = 'text' | 'table' | 'json' | 'yaml' | 'wide';

/** Checks an `-o` value against the formats a command allows. */
export function parseOutput(value: string | undefined, allowed: readonly OutputFormat[], fallback: OutputFormat): OutputFormat {
  if (value === undefined) return fallback;
  if ((allowed as readonly string[]).includes(value)) return value as OutputFormat;
  throw new UsageError(`unknown output format "${value}"; allowed: ${allowed.join(', ')}`);
}

/** Colour on stderr/stdout only for a terminal and when NO_COLOR is unset (no-color.org). */
export function useColor(isTTY: boolean | undefined, env: NodeJS.ProcessEnv): boolean {
  return Boolean(isTTY) && !('NO_COLOR' in env) && env.TERM !== 'dumb';
}

/** Renders rows as an aligned plain-text table with upper-case headers. */
export function renderTable(columns: string[], rows: string[][]): string {
  const widths = columns.map((c, i) => Math.max(c.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('   ').trimEnd();
  return [line(columns.map((c) => c.toUpperCase())), ...rows.map(line)].join('\n') + '\n';
}

/** One JSON document, two-space indented, newline-terminated. */
export function renderJson(value: unknown): string {
  return JSON.stringify(value, null, 2) + '\n';
}

/** YAML output; the yaml package (~30 ms to load) is loaded on first use, not by every command. */
export function renderYaml(value: unknown): string {
  const YAML = createRequire(import.meta.url)('yaml') as typeof YAMLModule;
  return YAML.stringify(value);
}
