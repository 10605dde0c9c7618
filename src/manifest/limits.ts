/**
 * Limits on everything ns8ctl parses from files, standard input and GitOps sources. They keep a
 * hostile or mistaken input (an alias bomb, a link loop, a FIFO, a 20 MB value) from hanging the
 * CLI or the controller or filling memory: input over a limit is refused with a located error that
 * names the limit, and nothing is written. docs/security.md lists them.
 */

/** The limits one load applies. */
export interface InputLimits {
  /** Bytes in one file or in standard input. */
  maxFileBytes: number;
  /** Bytes of all files of one load together. */
  maxTotalBytes: number;
  /** Manifest files found under the `-f` directories of one load. */
  maxFiles: number;
  /** Directory entries (of any kind) looked at while walking `-f` directories. */
  maxEntries: number;
  /** Directory levels below a `-f` directory. */
  maxDirectoryDepth: number;
  /** Nesting of mappings and lists in one document. */
  maxDepth: number;
  /** Values (scalars, mappings, lists) in one document, every alias use counted again. */
  maxNodes: number;
  /** YAML aliases (`*name`) resolved in one document. */
  maxAliases: number;
  /** Characters in one string value. */
  maxValueChars: number;
  /** Characters in one mapping key. */
  maxKeyChars: number;
  /** Characters of all strings and keys of one document together. */
  maxDocumentChars: number;
}

/** The limits every load uses unless a caller (a test) narrows them. */
export const DEFAULT_LIMITS: Readonly<InputLimits> = Object.freeze({
  maxFileBytes: 4 * 1024 * 1024,
  maxTotalBytes: 64 * 1024 * 1024,
  maxFiles: 10_000,
  maxEntries: 100_000,
  maxDirectoryDepth: 32,
  maxDepth: 64,
  maxNodes: 100_000,
  maxAliases: 100,
  maxValueChars: 256 * 1024,
  maxKeyChars: 1024,
  maxDocumentChars: 1024 * 1024,
});

/** A byte count for messages: `4194304 bytes (4 MiB)`. */
export function describeBytes(n: number): string {
  if (n >= 1024 * 1024 && n % (1024 * 1024) === 0) return `${n} bytes (${n / (1024 * 1024)} MiB)`;
  if (n >= 1024 && n % 1024 === 0) return `${n} bytes (${n / 1024} KiB)`;
  return `${n} bytes`;
}
