#
# ns8ctl's implementation of NS8's agent.safeio API (SPDX-License-Identifier: GPL-3.0-or-later).
#
"""Crash-safe file replacement and the advisory lock NS8 agents share.

Both are the contracts NS8 modules rely on:

- ``safe_open(path, 'w')`` yields a file object writing to a temporary file in the same
  directory; only when the ``with`` block ends without an exception is the data flushed,
  fsynced and renamed over ``path`` (then the directory is fsynced). A reader never sees a half
  written file; an exception leaves ``path`` untouched. The new file keeps the mode of the file
  it replaces (new files get the process umask).
- ``exclusive_file_lock(path)`` holds ``flock(LOCK_EX)`` on ``<dir>/.<name>.lock``. ns8ctl's
  module agent and node agent take the same lock (``state/.environment.lock``) before they
  rewrite ``state/environment``, so no writer loses another's update.
"""

import contextlib
import fcntl
import os
import tempfile


@contextlib.contextmanager
def safe_open(path, mode="w", encoding=None):
    if "w" not in mode and "x" not in mode:
        raise ValueError(f"safe_open({path!r}): only write modes are supported, got {mode!r}")
    directory = os.path.dirname(path) or "."
    fd, tmp_path = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    committed = False
    try:
        try:
            os.fchmod(fd, os.stat(path).st_mode & 0o7777)
        except FileNotFoundError:
            # mkstemp creates 0600: give a new file the mode the umask allows, as open() would.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        binary = "b" in mode
        with os.fdopen(fd, mode.replace("x", "w"), **({} if binary else {"encoding": encoding})) as handle:
            fd = None
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
        committed = True
        dirfd = os.open(directory, os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    finally:
        if fd is not None:
            os.close(fd)
        if not committed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_path)


@contextlib.contextmanager
def exclusive_file_lock(path):
    directory = os.path.dirname(path) or "."
    lock_path = os.path.join(directory, "." + os.path.basename(path) + ".lock")
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
