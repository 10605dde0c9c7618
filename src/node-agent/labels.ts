/**
 * The `org.nethserver.*` image labels the node agent acts on, parsed the way NS8's core reads them
 * (ns8-core-facts §9): hyphenated names, space-separated lists, `rootfull` "1" means rootfull.
 */
import { Ns8ctlError } from '../errors.js';

/** What a module image asks of its node. */
export interface ModuleLabels {
  rootfull: boolean;
  tcpPortsDemand: number;
  udpPortsDemand: number;
  /** Service image URLs (`org.nethserver.images`), in label order, duplicates removed. */
  images: string[];
  /** `org.nethserver.flags`, without the computed `rootfull`/`rootless`. */
  flags: string[];
  authorizations: string[];
  /** Directory of the image extracted into the install dir (`org.nethserver.imageroot`). */
  imageroot: string;
  /** Directory of the image extracted into the UI dir (`org.nethserver.uiroot`). */
  uiroot: string;
  /**
   * Who enables and starts the image's own units (`ns8ctl.units`): `module` (no label: NS8's rule,
   * the module's actions do it, e.g. `systemctl --user enable --now` in configure-module) or
   * `agent` (`ns8ctl.units=agent`: ns8ctl's node agent enables, starts and restarts them).
   */
  units: UnitsOwner;
}

/** Who enables and starts an image's units; see ModuleLabels.units. */
export type UnitsOwner = 'module' | 'agent';

/** The ns8ctl label that hands an image's units to the node agent (NS8 images do not have it). */
export const UNITS_LABEL = 'ns8ctl.units';

function unitsOwner(labels: Record<string, string>, image: string): UnitsOwner {
  const raw = (labels[UNITS_LABEL] ?? '').trim();
  if (raw === '' || raw === 'module') return 'module';
  if (raw === 'agent') return 'agent';
  throw new Ns8ctlError('image_label_invalid', `image ${image}: label ${UNITS_LABEL}=${JSON.stringify(labels[UNITS_LABEL])} must be "agent" or "module" (or absent: the module starts its own units, as in NS8)`);
}

const words = (v: string | undefined): string[] => [...new Set((v ?? '').split(/\s+/).filter(Boolean))];

function demand(labels: Record<string, string>, name: string, image: string): number {
  const raw = labels[name];
  if (raw === undefined || raw.trim() === '') return 0;
  const n = Number(raw.trim());
  if (!Number.isInteger(n) || n < 0 || n > 25001) {
    throw new Ns8ctlError('image_label_invalid', `image ${image}: label ${name}=${JSON.stringify(raw)} must be an integer between 0 and 25001`);
  }
  return n;
}

function rootDir(labels: Record<string, string>, name: string, dflt: string, image: string): string {
  const v = (labels[name] ?? dflt).trim().replace(/^\/+|\/+$/g, '') || dflt;
  if (v.split('/').some((seg) => seg === '..' || seg === '.' || seg === '')) {
    throw new Ns8ctlError('image_label_invalid', `image ${image}: label ${name}=${JSON.stringify(labels[name])} must be a relative directory without "." or ".." segments`);
  }
  return v;
}

/**
 * Parses an image's labels. Throws `image_label_invalid` (naming the image and label) for a
 * non-integer port demand, an unsafe imageroot/uiroot directory or an unknown `ns8ctl.units`.
 */
export function parseModuleLabels(labels: Record<string, string>, image: string): ModuleLabels {
  return {
    rootfull: (labels['org.nethserver.rootfull'] ?? '0').trim() === '1',
    tcpPortsDemand: demand(labels, 'org.nethserver.tcp-ports-demand', image),
    udpPortsDemand: demand(labels, 'org.nethserver.udp-ports-demand', image),
    images: words(labels['org.nethserver.images']),
    flags: words(labels['org.nethserver.flags']).filter((f) => f !== 'rootfull' && f !== 'rootless'),
    authorizations: words(labels['org.nethserver.authorizations']),
    imageroot: rootDir(labels, 'org.nethserver.imageroot', 'imageroot', image),
    uiroot: rootDir(labels, 'org.nethserver.uiroot', 'ui', image),
    units: unitsOwner(labels, image),
  };
}

/** NS8's `module/<id>/flags` members: the label flags plus `rootfull` or `rootless`, sorted. */
export function moduleFlags(l: ModuleLabels): string[] {
  return [...new Set([...l.flags, l.rootfull ? 'rootfull' : 'rootless'])].sort();
}
