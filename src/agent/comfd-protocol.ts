/**
 * The AGENT_COMFD protocol: a step writes one command per line on file descriptor 3, fields
 * separated by spaces, a field with spaces wrapped in double quotes (CSV style: `""` inside quotes
 * is one `"`). Unquoted empty fields (repeated spaces) are dropped; a quoted empty field `""` is
 * an empty argument. A quoted field cannot span lines, so values with newlines cannot be sent.
 */

/** One parsed agent command. */
export type AgentCommand =
  | { kind: 'set-env'; name: string; value: string }
  | { kind: 'unset-env'; name: string }
  | { kind: 'dump-env' }
  | { kind: 'set-status'; status: 'validation-failed' }
  | { kind: 'set-progress'; progress: number }
  | { kind: 'set-weight'; step: string; weight: number };

/** The commands a step may send, for error messages. */
export const AGENT_COMMANDS = ['set-env', 'unset-env', 'dump-env', 'set-status', 'set-progress', 'set-weight'] as const;

/** Splits one protocol line into fields; returns an error string on a quoting error. */
export function splitCommandLine(line: string): string[] | { error: string } {
  const fields: string[] = [];
  let i = 0;
  const n = line.length;
  while (i < n) {
    if (line[i] === ' ') {
      i++;
      continue;
    }
    if (line[i] === '"') {
      let value = '';
      i++;
      for (;;) {
        if (i >= n) return { error: 'unterminated quoted field' };
        const c = line[i];
        if (c === '"') {
          if (line[i + 1] === '"') {
            value += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        value += c;
        i++;
      }
      if (i < n && line[i] !== ' ') return { error: `unexpected character after a closing quote at column ${i + 1}` };
      fields.push(value);
      continue;
    }
    let value = '';
    while (i < n && line[i] !== ' ') {
      if (line[i] === '"') return { error: `bare quote inside an unquoted field at column ${i + 1}` };
      value += line[i];
      i++;
    }
    fields.push(value);
  }
  return fields;
}

/** Parses one line into a command, or an error string naming the command and what is allowed. */
export function parseAgentCommand(line: string): AgentCommand | { error: string } {
  const fields = splitCommandLine(line.replace(/\r$/, ''));
  if (!Array.isArray(fields)) return { error: `cannot parse ${JSON.stringify(line)}: ${fields.error}` };
  const [name, ...args] = fields;
  if (name === undefined) return { error: 'empty command' };
  const arity = (n: number): string | undefined => (args.length === n ? undefined : `${name} takes ${n} argument${n === 1 ? '' : 's'}, got ${args.length}`);
  switch (name) {
    case 'set-env': {
      const bad = arity(2);
      return bad ? { error: bad } : { kind: 'set-env', name: args[0] ?? '', value: args[1] ?? '' };
    }
    case 'unset-env': {
      const bad = arity(1);
      return bad ? { error: bad } : { kind: 'unset-env', name: args[0] ?? '' };
    }
    case 'dump-env': {
      const bad = arity(0);
      return bad ? { error: bad } : { kind: 'dump-env' };
    }
    case 'set-status': {
      const bad = arity(1);
      if (bad) return { error: bad };
      if (args[0] !== 'validation-failed') return { error: `set-status: unknown status ${JSON.stringify(args[0])}; allowed: validation-failed` };
      return { kind: 'set-status', status: 'validation-failed' };
    }
    case 'set-progress': {
      const bad = arity(1);
      if (bad) return { error: bad };
      const p = parseStrictInt(args[0] ?? '');
      if (p === undefined || p < 0 || p > 100) return { error: `set-progress: ${JSON.stringify(args[0])} is not an integer from 0 to 100` };
      return { kind: 'set-progress', progress: p };
    }
    case 'set-weight': {
      const bad = arity(2);
      if (bad) return { error: bad };
      const w = parseStrictInt(args[1] ?? '');
      if (w === undefined || w < 0) return { error: `set-weight: ${JSON.stringify(args[1])} is not a non-negative integer` };
      return { kind: 'set-weight', step: args[0] ?? '', weight: w };
    }
    default:
      return { error: `unknown command ${JSON.stringify(name)}; allowed: ${AGENT_COMMANDS.join(', ')}` };
  }
}

function parseStrictInt(s: string): number | undefined {
  if (!/^\d{1,9}$/.test(s)) return undefined;
  return Number(s);
}

/** Quotes fields for the protocol (used by built-in steps and tests): `set-env X "a b"`. */
export function formatCommandLine(fields: readonly string[]): string {
  return fields.map((f) => (f === '' || /[ "]/.test(f) ? `"${f.replace(/"/g, '""')}"` : f)).join(' ');
}
