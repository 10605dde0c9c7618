/**
 * Apply stage: carries out one planned step on the host or in Redis, through a table of handlers
 * grouped by concern (steps/: user, image, ports, environment, credentials, units, lifecycle,
 * removal). Each step is idempotent and re-reads what it needs at the time it runs (users, files),
 * so a step interrupted by a crash can simply be planned and applied again. The agent's record is
 * updated only after the effect.
 */
import type { Step } from './types.js';
import type { StepContext, StepHandler, StepHandlers } from './steps/context.js';
import { credentialsSteps } from './steps/credentials.js';
import { environmentSteps } from './steps/environment.js';
import { imageSteps } from './steps/image.js';
import { lifecycleSteps } from './steps/lifecycle.js';
import { portsSteps } from './steps/ports.js';
import { removalSteps } from './steps/removal.js';
import { restoreSteps } from './steps/restore.js';
import { moveSteps } from './steps/move.js';
import { unitsSteps } from './steps/units.js';
import { userSteps } from './steps/user.js';

export type { StepContext } from './steps/context.js';

/** Every step kind's handler: the type makes a kind without a handler a compile error. */
const HANDLERS: StepHandlers<Step['kind']> = { ...userSteps, ...imageSteps, ...portsSteps, ...environmentSteps, ...credentialsSteps, ...unitsSteps, ...lifecycleSteps, ...removalSteps, ...restoreSteps, ...moveSteps };

/** Applies one step. Throws an Ns8ctlError naming the instance and the step on failure. */
export function applyStep(step: Step, ctx: StepContext): Promise<void> {
  return (HANDLERS[step.kind] as StepHandler<Step['kind']>)(step, ctx);
}
