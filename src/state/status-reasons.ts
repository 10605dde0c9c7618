/**
 * Status reasons of a Module that only a change can fix (of the Module, of the repositories, of
 * the image or of the core): the node agent stops retrying them (it waits for a new generation,
 * rechecking now and then) and the controller reports them as Stalled, not as Retrying. One set,
 * read by both, so the two never disagree.
 */
export const TERMINAL_REASONS: ReadonlySet<string> = new Set(['ImageResolutionFailed', 'ImageLabelInvalid', 'EnvironmentInvalid', 'RootfullChanged', 'UpdateRefused', 'UpdateFailed', 'CloneUnavailable']);
