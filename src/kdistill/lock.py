"""One writer at a time: an output directory (or a cache file) is locked by the kdistill process writing it.

A command that writes into a directory holds `<directory>/.kdistill.lock` (`directory_lock`) from start to end; a
second kdistill process that wants the same directory is refused at once, in one line naming the holder (the pid,
command and start time the holder wrote into the lock file). A cache file is locked through `<file>.lock`
(`file_lock`) while it is made, and an export through `<export>.lock` beside it; a second process waits for it
there, since it wants the very file being made.

The locks are `fcntl.flock` locks, which belong to the open file: the kernel releases them when the holder ends,
however it ends (SIGKILL, the OOM killer), so a lock file left by a killed process is just locked again by the
next one, which logs that it takes it over. There is no pid to test for liveness and no timeout to guess.

The lock file is removed on release, so a command leaves a directory as it found it. Another process may open the
file just before it is removed and lock a file no longer at the path; a process that gets a lock therefore checks
that the file it locked is still the one at the path, and starts over if not.

Within a process a lock is reentrant: `kdistill run` holds its output_dir for the whole command while teach, distill
and eval each ask for it again. Directories nest: a sweep holds its directory and, while it runs a cell, the cell's
directory too; a process that wants a directory inside one another process holds (`kdistill distill` into a cell of
a running sweep) is refused as well, whether or not the holder is in that cell now.

Limits: the locks are advisory (they stop kdistill, not `rm`); on a network file system they are as good as its
locking (Linux maps flock to the NFS server's locks). A directory this process may not write to is one it cannot
change either: it goes on unlocked there (a read-only finished run can still be evaluated).
"""

import datetime
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import UserError

logger = logging.getLogger(__name__)

LOCK_FILE = ".kdistill.lock"
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)

# What this process holds: the lock file's real path -> how many times it was taken (reentrant).
_held: dict[str, int] = {}


def _me() -> dict:
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    program = {"": "python", "-c": "python -c", "cli.py": "kdistill", "__main__.py": "kdistill"}.get(program, program)
    command = " ".join([program, *map(shlex.quote, sys.argv[1:])])
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": datetime.datetime.now().isoformat(sep=" ", timespec="seconds")}


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 1 << 16).decode("utf-8", "replace")
        value = json.loads(text) if text.strip() else {}
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    """'kdistill process 4242 (kdistill distill --config c.yaml, since 2026-05-01 12:00:03)', the host named when it
    is another machine's."""
    if not holder.get("pid"):
        return "another kdistill process (it has not yet written its pid)"
    where = f" on {holder['host']}" if holder.get("host") and holder["host"] != socket.gethostname() else ""
    about = ", ".join(x for x in (holder.get("command"), holder.get("started") and f"since {holder['started']}") if x)
    return f"kdistill process {holder['pid']}{where}" + (f" ({about})" if about else "")


def _holder(fd: int) -> dict:
    # The holder writes its name just after locking: a process that finds the lock taken in that instant waits a
    # moment for it rather than name nobody.
    for _ in range(20):
        holder = _read(fd)
        if holder.get("pid"):
            return holder
        time.sleep(0.025)
    return {}


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _acquire(path: str, busy: str, wait: bool, advice: str = "") -> tuple[int | None, bool]:
    """Lock `path` (created if missing); returns its descriptor (None: not writable here, so not locked) and whether
    this process may write it. `busy` is the refusal's text before the holder's name ('output_dir X is in use by'),
    `advice` what follows it."""
    while True:
        writable = True
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            if err.errno not in _NOT_WRITABLE:
                raise
            try:  # a lock file of another user's: a read-only descriptor locks it as well
                fd, writable = os.open(path, os.O_RDONLY), False
            except OSError:
                logger.debug("%s: not writable here; going on without a lock", path)
                return None, False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = describe(_holder(fd))
                if not wait:
                    raise UserError(f"{busy} {holder}; wait for it to end{advice}") from None
                logger.info("%s %s; waiting for it", busy, holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed the file as this process locked it: lock the one at the path now
    left = _read(fd)
    if left.get("pid") and left.get("pid") != os.getpid():
        # Locked by nobody, yet named: its holder ended without releasing it (killed); the kernel freed the lock.
        logger.info("%s: taking over the lock of %s, which ended without releasing it", path, describe(left))
    if writable:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
    return fd, writable


def _release(path: str, fd: int, writable: bool) -> None:
    if writable:
        try:
            os.unlink(path)  # before the lock goes: whoever locks the old file next sees it is gone
        except OSError:
            pass
    os.close(fd)


@contextmanager
def _hold(path: str, busy: str, wait: bool, advice: str = "") -> Iterator[None]:
    key = os.path.realpath(path)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd, writable = _acquire(path, busy, wait, advice)
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        if fd is not None:
            _release(path, fd, writable)


def _check_outer(real: str, role: str, directory: str, advice: str) -> None:
    """Refuse `directory` (resolved: `real`) if a directory above it is held by another process: a shared lock
    tried on each lock file above, and let go at once."""
    outer = os.path.dirname(real)
    while True:
        path = os.path.join(outer, LOCK_FILE)
        if os.path.realpath(path) not in _held and os.path.isfile(path):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                fd = None  # gone since, or not readable here: nobody to name
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = describe(_holder(fd))
                    raise UserError(f"{role} {directory} is inside {outer}, which is in use by {holder}; wait for it "
                                    f"to end{advice}") from None
                finally:
                    os.close(fd)  # releases the shared lock
        if os.path.dirname(outer) == outer:
            return
        outer = os.path.dirname(outer)


@contextmanager
def directory_lock(directory: str, role: str = "output_dir",
                   advice: str = ", or use another output_dir") -> Iterator[None]:
    """Hold `directory` for this process (made if missing, and removed again if it is still empty at the end): a
    second kdistill process asking for it is refused with one line naming this one.

    Args:
        role: what the directory is to the user, for the messages ('output_dir', 'sweep directory').
        advice: the refusal's end, after 'wait for it to end'.
    """
    real = os.path.realpath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"{role} {directory} is a file, not a directory; give a directory (it is created if missing)")
    made = []
    top = real
    while not os.path.exists(top):
        made.append(top)
        top = os.path.dirname(top)
    try:
        os.makedirs(real, exist_ok=True)
    except OSError as err:
        raise UserError(f"{role} {directory}: cannot create it ({err.strerror or err})") from None
    try:
        with _hold(os.path.join(real, LOCK_FILE), f"{role} {directory} is in use by", wait=False, advice=advice):
            # After taking it: a holder above that comes here next finds it taken, so one of the two always yields.
            _check_outer(real, role, directory, advice)
            yield
    finally:
        for path in made:  # deepest first; one that now holds something stays
            try:
                os.rmdir(path)
            except OSError:
                break


def refuse_inside_busy(path: str, role: str, advice: str = "") -> None:
    """Refuse `path` (a file or directory this process is about to write) when a directory above it is held by
    another kdistill process, in one line naming that process; holds nothing itself."""
    _check_outer(os.path.realpath(path), role, path, advice)


@contextmanager
def file_lock(path: str, what: str) -> Iterator[None]:
    """Hold `path` (a file this process is about to write) through `<path>.lock`, waiting while another process
    holds it. The lock file's directory must exist or be creatable.

    Args:
        what: the file as the user knows it, for the log line while waiting ('soft-label cache X').
    """
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        if err.errno not in _NOT_WRITABLE:
            raise
    with _hold(path + ".lock", f"{what} is being written by", wait=True):
        yield
