import { Ns8ctlError } from '../errors.js';

/** One problem found in a repodata document or a createrepo directory, with where it is. */
export interface RepositoryProblem {
  /** JSON pointer into repodata.json (`/3/versions/0/tag`), or a file path for createrepo. */
  where: string;
  message: string;
}

/**
 * A software repository could not be read or used, or a module/version could not be resolved.
 * Codes follow NS8 where NS8 has one (`repodata_not_found`, `repodata_is_not_json`,
 * `repodata_is_not_valid_metadata`, `repository_not_accessible`); the others are ns8ctl's
 * (`module_not_found`, `version_not_found`, `invalid_version_spec`, `createrepo_invalid`, ...).
 * Always the user's problem (input, network, repository content), printed without a stack.
 */
export class RepositoryError extends Ns8ctlError {
  readonly problems: RepositoryProblem[];
  constructor(code: string, message: string, opts: { cause?: unknown; problems?: RepositoryProblem[] } = {}) {
    super(code, message, { user: true, ...(opts.cause !== undefined ? { cause: opts.cause } : {}) });
    this.problems = opts.problems ?? [];
  }
  override toJSON(): Record<string, unknown> {
    return { error: this.code, message: this.message, ...(this.problems.length ? { problems: this.problems } : {}) };
  }
}
