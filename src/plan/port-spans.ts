/**
 * A node's port ranges as data, for checks that run before anything is allocated (the plan's
 * move preflight), and the parsing the node agent's allocation shares (src/node-agent/ports.ts,
 * first-fit in 20000-45000 like NS8's ports_manager); the format read here is the one it writes:
 * HASH `keys.nodePorts(node)`, field `<id>/<proto>` -> `start-end`. Pure.
 */

export type PortProtocol = 'tcp' | 'udp';

/** An inclusive port range. */
export interface PortSpan {
  start: number;
  end: number;
}

/** The bounds NS8's allocator hands ports out of (ns8-core-facts §2), inclusive. */
export const NODE_PORT_BOUNDS: Readonly<PortSpan> = { start: 20000, end: 45000 };

/** Parses `start-end`; undefined for anything else (a hand-edited value is not a range). */
export function parsePortSpan(v: string | undefined | null): PortSpan | undefined {
  const m = /^(\d+)-(\d+)$/.exec(v ?? '');
  if (!m) return undefined;
  const r = { start: Number(m[1]), end: Number(m[2]) };
  return r.end >= r.start ? r : undefined;
}

/** Number of ports in a range (0 for none). */
export function portSpanSize(r: PortSpan | undefined): number {
  return r ? r.end - r.start + 1 : 0;
}

/**
 * The ranges of one protocol in a node ports hash, by instance id. Fields that are not
 * `<id>/<proto>` or values that are not ranges are skipped.
 */
export function portSpansOf(hash: Readonly<Record<string, string>>, proto: PortProtocol): Map<string, PortSpan> {
  const out = new Map<string, PortSpan>();
  const suffix = `/${proto}`;
  for (const [field, value] of Object.entries(hash)) {
    if (!field.endsWith(suffix) || field.length === suffix.length) continue;
    const r = parsePortSpan(value);
    if (r) out.set(field.slice(0, -suffix.length), r);
  }
  return out;
}

/**
 * Where the allocator's first-fit scan would place `n` ports among `used` within `bounds`, or
 * undefined when no gap of `n` ports is left. `n` <= 0 needs no ports: an empty range at
 * `bounds.start` (size 0) is returned. Ranges may overlap and come in any order.
 */
export function firstFreeSpan(used: readonly PortSpan[], n: number, bounds: Readonly<PortSpan> = NODE_PORT_BOUNDS): PortSpan | undefined {
  if (n <= 0) return { start: bounds.start, end: bounds.start - 1 };
  let start = bounds.start;
  for (const r of [...used].sort((a, b) => a.start - b.start)) {
    if (r.start - start >= n) break;
    if (r.end + 1 > start) start = r.end + 1;
  }
  return start + n - 1 <= bounds.end ? { start, end: start + n - 1 } : undefined;
}
