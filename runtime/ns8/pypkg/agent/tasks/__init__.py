#
# ns8ctl's implementation of NS8's agent API (SPDX-License-Identifier: GPL-3.0-or-later).
#
"""Run tasks on other agents: ``run``, ``run_nowait``, ``runp``, ``runp_nowait``, ``runp_brief``.

Results have NS8's shape: ``{"output": <JSON-decoded output, else the raw text>, "error": str,
"exit_code": int}``.

How a task travels depends on the credentials in the environment:

- an instance (``REDIS_USER=module/<self>``, what every action step has): through ns8ctl's task
  relay, the path NS8 gives modules through its api-server. The request goes on the instance's
  own ``module/<self>/relay/tasks``; the relay stamps ``user = module/<self>`` and forwards it, so
  the receiving agent checks the instance's roles (a missing authorization ends the task with
  exit code 32, ``module_permission_denied``). The result comes back under
  ``task/module/<self>/relay/<id>/`` and progress on ``progress/module/<self>/relay/<id>``.
- any other user (an administrator's credentials): NS8's Redis protocol itself, LPUSH on
  ``<agent_id>/tasks`` and the result under ``task/<agent_id>/<id>/``.

Progress messages are followed with NS8's read-only ``default`` user (module users may not
SUBSCRIBE); results are also polled every 2 seconds, so a missed message only delays.
"""

import json
import os
import re
import sys
import time
import uuid

import redis

from .exceptions import *  # noqa: F401,F403  (NS8 exports its exceptions from agent.tasks)
from .exceptions import TaskError, TaskTimeout

_FINAL = ("completed", "aborted", "validation-failed")
_POLL_SECONDS = 2.0
_MODULE_USER = re.compile(r"^module/([a-z][a-z0-9_-]*[0-9]+)$")


def run(agent_id, action, data=None, **kwargs):
    """Run one task and wait for its result (see the module documentation)."""
    return runp([{"agent_id": agent_id, "action": action, "data": {} if data is None else data}], **kwargs)[0]


def run_nowait(agent_id, action, data=None, **kwargs):
    """Submit one task; return where its result will be (``task/.../<id>``) without waiting."""
    return runp_nowait([{"agent_id": agent_id, "action": action, "data": {} if data is None else data}], **kwargs)[0]


def runp(tasks, **kwargs):
    """Run tasks in parallel and return their results in order.

    Each task is a dict ``{"agent_id", "action", "data"?, "parent"?, "extra"?}``. Keyword
    arguments: ``progress_callback(p)`` (mean progress of all tasks, increasing), ``extra``
    (the task's ``extra`` field for every task), ``timeout`` (ns8ctl addition: seconds to wait,
    default forever as in NS8). NS8's ``endpoint``, ``check_idle_time`` and ``on_sigterm_tasks``
    are accepted and ignored. With more than one task, a task that cannot be followed (a Redis
    error, the timeout) has the exception object in its place; with one, it is raised.
    """
    return _Batch(tasks, kwargs).run(wait=True)


def runp_nowait(tasks, **kwargs):
    """Submit tasks; return their result paths in order, without waiting."""
    return _Batch(tasks, kwargs).run(wait=False)


def runp_brief(tasks, **kwargs):
    """Run tasks in parallel; print each failure on stderr and return how many failed."""
    results = runp(tasks, **kwargs)
    failed = 0
    for task, result in zip(tasks, results):
        name = f"{task['agent_id']}/{task['action']}"
        if isinstance(result, Exception):
            print(f"Task {name} run error: {result}", file=sys.stderr)
            failed += 1
        elif result["exit_code"] != 0:
            print(f"Task {name} run failed: {result!r}", file=sys.stderr)
            failed += 1
    return failed


def _decode_output(text):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


class _Route:
    """Where one task is sent and where its result and progress appear."""

    def __init__(self, self_id, agent_id, task_id):
        if self_id:
            self.queue = f"module/{self_id}/relay/tasks"
            self.result = f"task/module/{self_id}/relay/{task_id}"
            self.channel = f"progress/module/{self_id}/relay/{task_id}"
        else:
            self.queue = f"{agent_id}/tasks"
            self.result = f"task/{agent_id}/{task_id}"
            self.channel = f"progress/{agent_id}/task/{task_id}"


class _Batch:
    def __init__(self, tasks, kwargs):
        import agent  # the package imports this module: resolve it at call time

        self._agent = agent
        self.tasks = tasks
        self.progress_callback = kwargs.pop("progress_callback", None)
        self.extra = kwargs.pop("extra", None)
        timeout = kwargs.pop("timeout", None)
        self.deadline = None if timeout is None else time.monotonic() + float(timeout)
        for ignored in ("endpoint", "check_idle_time", "on_sigterm_tasks", "nowait"):
            kwargs.pop(ignored, None)
        if kwargs:
            raise TypeError(f"agent.tasks: unexpected keyword arguments {sorted(kwargs)}")
        match = _MODULE_USER.match(os.environ.get("REDIS_USER", ""))
        self.self_id = match.group(1) if match else None
        self.progress = [0] * len(tasks)
        self.reported = -1

    def _build(self):
        parent = os.environ.get("AGENT_TASK_ID", "")
        built = []
        for task in self.tasks:
            task_id = str(uuid.uuid4())
            body = {
                "id": task_id,
                "action": task["action"],
                "data": task.get("data", {}),
                "extra": self.extra if self.extra else task.get("extra", {}),
                "parent": task.get("parent", parent),
            }
            if self.self_id:
                body["agent_id"] = task["agent_id"]
            built.append((_Route(self.self_id, task["agent_id"], task_id), json.dumps(body)))
        return built

    def run(self, wait):
        built = self._build()
        writer = self._agent.redis_connect(privileged=True)
        subscriber = None
        pubsub = None
        try:
            if wait:
                subscriber = self._agent.redis_connect()
                pubsub = _subscribe(subscriber, [route.channel for route, _ in built])
            pipe = writer.pipeline(transaction=False)
            for route, body in built:
                pipe.lpush(route.queue, body)
            pipe.execute()
            if not wait:
                return [route.result for route, _ in built]
            return self._wait(writer, pubsub, [route for route, _ in built])
        finally:
            if pubsub is not None:
                pubsub.close()
            if subscriber is not None:
                subscriber.close()
            writer.close()

    def _report(self, index, progress):
        if not self.progress_callback or not isinstance(progress, int):
            return
        self.progress[index] = progress
        mean = int(sum(self.progress) / len(self.progress))
        if mean > self.reported:
            self.reported = mean
            self.progress_callback(mean)

    def _wait(self, writer, pubsub, routes):
        results = [None] * len(routes)
        by_channel = {route.channel: i for i, route in enumerate(routes)}
        pending = set(range(len(routes)))
        next_poll = 0.0

        def read(indexes):
            pipe = writer.pipeline(transaction=False)
            for i in indexes:
                pipe.mget(f"{routes[i].result}/output", f"{routes[i].result}/error", f"{routes[i].result}/exit_code")
            for i, (output, error, code) in zip(indexes, pipe.execute()):
                if code is None:
                    continue
                results[i] = {"output": _decode_output(output if output is not None else ""), "error": error or "", "exit_code": int(code)}
                self._report(i, 100)
                pending.discard(i)

        try:
            while pending:
                now = time.monotonic()
                if self.deadline is not None and now >= self.deadline:
                    raise TaskTimeout(f"no result within the timeout for {', '.join(routes[i].result for i in sorted(pending))}")
                if now >= next_poll:
                    read(sorted(pending))
                    next_poll = now + _POLL_SECONDS
                    continue
                wait_for = next_poll - now if self.deadline is None else min(next_poll, self.deadline) - now
                if pubsub is None:
                    time.sleep(max(0.0, wait_for))
                    continue
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=max(0.0, wait_for))
                if not message or message.get("type") != "message":
                    continue
                index = by_channel.get(message.get("channel"))
                if index is None or index not in pending:
                    continue
                try:
                    status = json.loads(message["data"])
                except (TypeError, ValueError):
                    continue
                self._report(index, status.get("progress"))
                if status.get("status") in _FINAL:
                    read([index])
        except (TaskError, redis.exceptions.RedisError) as error:
            if len(routes) == 1:
                raise
            for i in pending:
                results[i] = error
        return results


def _subscribe(connection, channels):
    """A PubSub subscribed to ``channels`` (confirmed, so no message is missed), or None when
    subscribing is refused or not confirmed in 5 s (results are then polled only)."""
    pubsub = connection.pubsub()
    try:
        pubsub.subscribe(*channels)
        confirmed = 0
        deadline = time.monotonic() + 5.0
        while confirmed < len(channels) and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if message and message.get("type") == "subscribe":
                confirmed += 1
        if confirmed == len(channels):
            return pubsub
    except redis.exceptions.RedisError:
        pass
    pubsub.close()
    return None
