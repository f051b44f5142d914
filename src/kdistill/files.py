"""Writing outputs so that a killed run never leaves a half-written file where a good one was; where a file is not
valid text; how a missing relative path was looked for."""

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import UserError

# A model's label names -> ids, saved beside it (run directories, students, exports).
LABELS_FILE = "labels.json"


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temp file in `path`'s directory, then rename it to `path` (atomic on POSIX)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    except OSError as err:
        raise _naming(err, path) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; an output is as readable as any new file
        os.replace(tmp, path)
    except OSError as err:
        if err.filename not in (None, tmp):
            raise
        raise _naming(err, path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """A directory made whole or not at all: yields a temp directory beside `path` (same file system) to fill, which
    on a clean exit is renamed onto `path`; an old `path` is moved aside and removed only then. On an exception the
    temp directory goes and `path` stays as it was. A process killed while filling it leaves a `.tmp-NAME-*`
    directory beside `path`, never a half-made `path` (`stale_siblings` finds such leftovers)."""
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; an output is as readable as any new directory
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=f".old-{name}-", dir=parent)
            os.replace(path, old)  # onto the empty directory just made
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def stale_siblings(path: str) -> list[str]:
    """What `atomic_directory(path)` calls killed midway left beside `path` (for a caller that holds `path`'s lock,
    so no live process is filling them)."""
    parent, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(parent):
        return []
    return sorted(os.path.join(parent, n) for n in os.listdir(parent)
                  if n.startswith((f".tmp-{name}-", f".old-{name}-")) and os.path.isdir(os.path.join(parent, n)))


def _naming(err: OSError, path: str) -> OSError:
    """`err` about the file the user knows (`path`), not the temp file beside it ('permission denied: out/eval.json',
    not '.../.tmp-k2j4.json'); OSError(errno, ...) is the matching subclass (PermissionError, ...)."""
    return OSError(err.errno, err.strerror, path) if err.errno is not None else err


def write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, write)


def write_json(path: str, value: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(value, fh, indent=2, default=str)

    atomic_write(path, write)


def update_json(path: str, value: dict) -> bool:
    """`write_json`, unless `path` already holds exactly these bytes: a rerun that changes nothing writes nothing
    (so it works in a read-only directory, and leaves the file's mtime alone). Returns whether it wrote."""
    text = json.dumps(value, indent=2, default=str)
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return False
    except (OSError, UnicodeDecodeError):
        pass
    write_text(path, text)
    return True


def relative_path_hint(path: str) -> str:
    """For a path that is not there: where a relative one was looked for (config paths are read from the working
    directory, not from the config file's), '' for an absolute one."""
    if os.path.isabs(path):
        return ""
    return f" (relative paths are read from the working directory, {os.getcwd()}, not from the config file's)"


def undecodable_at(path: str, encoding: str) -> str | None:
    """Where `path` first stops being valid `encoding` text, as 'line N, byte M: REASON'; None if it never does.
    (A decoder's own offset is into its buffer, not the file: read the file again, line by line; error path only.)"""
    with open(path, "rb") as fh:
        offset = 0
        for number, line in enumerate(fh, 1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as bad:
                return f"line {number}, byte {offset + bad.start}: {bad.reason}"
            offset += len(line)
    return None


def decode_error(path: str, encoding: str, err: UnicodeDecodeError,
                 hint: str = "set the data option encoding to the file's encoding (e.g. encoding: latin-1)") -> UserError:
    """A one-line error naming the first line and byte of `path` that is not valid `encoding`, and `hint`."""
    where = undecodable_at(path, encoding) or err.reason
    return UserError(f"{path}: not valid {encoding} text ({where}); {hint}")
