import { Ns8ctlError } from '../errors.js';

/**
 * A task finished with a non-zero exit code. `exitCode` is the task's own exit code (NS8: 8 unknown
 * action, 10 validation failed, 11 busy, 32 permission denied, anything else the action's), so
 * `ns8ctl run-action` exits the way the action did.
 */
export class TaskFailedError extends Ns8ctlError {
  readonly taskId: string;
  readonly status: string;
  readonly output: string;
  readonly errorText: string;
  constructor(info: { agentId: string; action: string; taskId: string; status: string; exitCode: number; output: string; error: string }) {
    const tail = info.error.trim().split('\n').slice(-3).join('\n');
    super(
      'task_failed',
      `${info.agentId}: action ${info.action} ${info.status} with exit code ${info.exitCode} (task ${info.taskId})${tail ? `: ${tail}` : ''}`,
      { user: true, exitCode: info.exitCode > 0 && info.exitCode < 256 ? info.exitCode : 1 },
    );
    this.taskId = info.taskId;
    this.status = info.status;
    this.output = info.output;
    this.errorText = info.error;
  }
  override toJSON(): Record<string, unknown> {
    return { error: this.code, message: this.message, task: this.taskId, status: this.status, exitCode: this.exitCode, output: this.output, stderr: this.errorText };
  }
}
