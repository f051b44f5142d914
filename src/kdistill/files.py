"""Writing outputs so that a killed run never leaves a half-written file where a good one was; where a file is not
valid text; how a missing relative path was looked for."""

import json
import os
import tempfile
from collections.abc import Callable


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
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; an output is as readable as any new file
        os.replace(tmp, path)
    except OSError as err:
        if err.filename not in (None, tmp):
            raise
        raise _naming(err, path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
