#
# ns8ctl's implementation of NS8's agent API (SPDX-License-Identifier: GPL-3.0-or-later).
#
"""Exceptions of ``agent.tasks``, with NS8's class names so ``except`` clauses keep working."""


class TaskError(Exception):
    """Base class of every agent.tasks error."""


class TaskRetryError(TaskError):
    pass


class TaskRetryAbort(TaskRetryError):
    pass


class TaskRetryWsDisconnect(TaskRetryError):
    pass


class TaskRetryPubSubDisconnect(TaskRetryError):
    pass


class TaskStatusNotFound(TaskError):
    pass


class TaskSubmissionCheckFailed(TaskError):
    pass


class TaskTimeout(TaskError):
    """ns8ctl addition: no result within the ``timeout=`` given to run/runp."""
