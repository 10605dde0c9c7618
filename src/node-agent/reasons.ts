/**
 * The one table from the node agent's error codes (snake_case, as every ns8ctl code) to the
 * reasons of a Module's status conditions (PascalCase, as Kubernetes reasons). Users and the
 * controller read the reasons; scripts match the codes (docs/errors.md lists both).
 */
import type { Ns8ctlError } from '../errors.js';

/** Error code -> status reason. Codes not listed are `StepFailed`. */
export const REASONS: Readonly<Record<string, string>> = {
  registry_unreachable: 'RegistryUnreachable',
  image_not_found: 'ImageNotFound',
  unit_failed: 'UnitFailed',
  image_resolution_unavailable: 'ImageResolutionFailed',
  // Resolution through the repositories (src/repository/): the spec names nothing installable.
  module_not_found: 'ImageResolutionFailed',
  version_not_found: 'ImageResolutionFailed',
  invalid_version_spec: 'ImageResolutionFailed',
  invalid_image_spec: 'ImageResolutionFailed',
  repodata_not_found: 'ImageResolutionFailed',
  repodata_is_not_json: 'ImageResolutionFailed',
  repodata_is_not_valid_metadata: 'ImageResolutionFailed',
  // A repository that cannot be downloaded now (network, HTTP error) may answer later.
  repository_not_accessible: 'RepositoryUnreachable',
  image_label_invalid: 'ImageLabelInvalid',
  ports_exhausted: 'PortsExhausted',
  environment_value_invalid: 'EnvironmentInvalid',
  user_manager_unavailable: 'UserManagerUnavailable',
  module_deleting: 'Deleting',
  // A module agent's lifecycle action (create-module, update-module, destroy-module).
  lifecycle_action_failed: 'LifecycleActionFailed',
  task_timeout: 'LifecycleActionFailed',
  // Refusals of an update, and the planner's `blocked` codes.
  update_refused: 'UpdateRefused',
  update_failed: 'UpdateFailed',
  rootfull_changed: 'RootfullChanged',
  dependency_not_ready: 'DependencyNotReady',
  // Backups and restores (backup/): a restore that cannot start, a snapshot before an update.
  restore_source_missing: 'RestoreFailed',
  backup_destination_missing: 'RestoreFailed',
  backup_password_missing: 'RestoreFailed',
  snapshot_not_found: 'RestoreFailed',
  backup_first_unavailable: 'BackupFirstFailed',
  backup_first_failed: 'BackupFirstFailed',
  clone_unavailable: 'CloneUnavailable',
  move_cancelled: 'MoveFailed',
  move_in_progress: 'Moving',
  move_failed: 'MoveFailed',
  move_unsupported: 'MoveFailed',
};

/** Reasons only a change of the Module, of the repositories or of the core can fix (shared with the controller). */
export { TERMINAL_REASONS } from '../state/status-reasons.js';

/** The status reason of an error code (`StepFailed` for codes the table does not name). */
export function reasonOfCode(code: string): string {
  return REASONS[code] ?? 'StepFailed';
}

/** The status reason of an error. */
export function reasonOf(e: Ns8ctlError): string {
  return reasonOfCode(e.code);
}
