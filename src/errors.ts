/**
 * One error base for the whole program. Every error has a stable `code`, a human message that
 * names the object and the input at fault, an optional `cause`, and says whether it is the user's
 * input (`user: true`, printed without a stack) or an internal fault.
 */
export class Ns8ctlError extends Error {
  /** Stable, machine-readable code, e.g. `manifest_invalid`, `redis_unreachable`. */
  readonly code: string;
  /** True when the user's input or environment is at fault (no stack trace printed). */
  readonly user: boolean;
  /** Exit code main() uses for this error (1 by default, 2 for usage errors). */
  readonly exitCode: number;

  constructor(code: string, message: string, opts: { cause?: unknown; user?: boolean; exitCode?: number } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.user = opts.user ?? true;
    this.exitCode = opts.exitCode ?? 1;
  }

  /** JSON form for `-o json` error output. */
  toJSON(): Record<string, unknown> {
    return { error: this.code, message: this.message };
  }
}

/** Wrong command-line usage (unknown flag, missing argument). Exit code 2. */
export class UsageError extends Ns8ctlError {
  constructor(message: string) {
    super('usage', message, { user: true, exitCode: 2 });
  }
}

/** One problem found in a manifest, with its location. */
export interface Diagnostic {
  /** File the problem is in (`-` for stdin). */
  file: string;
  /** 1-based line and column; 0 when unknown. */
  line: number;
  col: number;
  /** JSON pointer into the document (`/spec/node`), `` for the whole document. */
  pointer: string;
  message: string;
}

/** Formats a diagnostic as `file:line:col  /json/pointer  message`. */
export function formatDiagnostic(d: Diagnostic): string {
  return `${d.file}:${d.line}:${d.col}  ${d.pointer || '/'}  ${d.message}`;
}

/** Manifests that do not load or validate: carries every problem found at once. */
export class ManifestError extends Ns8ctlError {
  readonly diagnostics: Diagnostic[];
  constructor(diagnostics: Diagnostic[]) {
    const n = diagnostics.length;
    super(
      'manifest_invalid',
      `${n} problem${n === 1 ? '' : 's'} in the manifests; nothing was written:\n` + diagnostics.map((d) => '  ' + formatDiagnostic(d)).join('\n'),
      { user: true },
    );
    this.diagnostics = diagnostics;
  }
  override toJSON(): Record<string, unknown> {
    return { error: this.code, message: 'manifests are invalid; nothing was written', diagnostics: this.diagnostics };
  }
}

/**
 * Exit code of a Redis connection fault: bad URL, nothing answering, no answer in time, refused
 * credentials, a missing admin password file, a read the credentials do not allow.
 */
export const EXIT_REDIS = 3;

/** Redis cannot be reached, refused a command, or is not the server we expect. */
export class RedisError extends Ns8ctlError {
  constructor(code: string, message: string, opts: { cause?: unknown; user?: boolean; exitCode?: number } = {}) {
    super(code, message, opts);
  }
}

/** A concurrent writer changed desired state between our read and our write. */
export class ConflictError extends Ns8ctlError {
  constructor(message: string) {
    super('conflict', message, { user: true });
  }
}

/** A safety rule refused the operation (e.g. pruning most of the inventory). */
export class RefusedError extends Ns8ctlError {
  constructor(code: string, message: string) {
    super(code, message, { user: true });
  }
}

/** An object named on the command line does not exist. */
export class NotFoundError extends Ns8ctlError {
  constructor(message: string) {
    super('not_found', message, { user: true });
  }
}

/** An external command failed; keeps argv, exit code and stderr. */
export class CommandFailedError extends Ns8ctlError {
  readonly argv: readonly string[];
  readonly exitCodeOfCommand: number | null;
  readonly stderr: string;
  constructor(code: string, message: string, info: { argv: readonly string[]; exitCode: number | null; stderr: string; cause?: unknown }) {
    super(code, message, { user: false, cause: info.cause });
    this.argv = info.argv;
    this.exitCodeOfCommand = info.exitCode;
    this.stderr = info.stderr;
  }
  override toJSON(): Record<string, unknown> {
    return { error: this.code, message: this.message, argv: this.argv, exitCode: this.exitCodeOfCommand, stderr: this.stderr };
  }
}

/**
 * A problem in the module agent's area: a bad action or step name, a refused agent command, an
 * instance that cannot be found for runagent. Always names the instance/action and what is allowed.
 */
export class AgentError extends Ns8ctlError {
  constructor(code: string, message: string, opts: { cause?: unknown; user?: boolean; exitCode?: number } = {}) {
    super(code, message, opts);
  }
}

/** Turns anything thrown into an Ns8ctlError (internal when it was not one already). */
export function toNs8ctlError(err: unknown): Ns8ctlError {
  if (err instanceof Ns8ctlError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new Ns8ctlError('internal', message, { cause: err, user: false });
}
