"""Writing outputs so that a killed run never leaves a half-written file where a good one was."""

import json
import os
import tempfile
from collections.abc import Callable

from .errors import UserError

# A model's label names -> ids, saved beside it (run directories, students, exports).
LABELS_FILE = "labels.json"


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temp file in `path`'s directory, then rename it to `path` (atomic on POSIX)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; an output is as readable as any new file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def decode_error(path: str, encoding: str, err: UnicodeDecodeError,
                 hint: str = "set the data option encoding to the file's encoding (e.g. encoding: latin-1)") -> UserError:
    """A one-line error naming the first line and byte of `path` that is not valid `encoding`, and `hint`."""
    # The error's offset is into the parser's buffer, not the file: find the first bad line again (error path only).
    where = err.reason
    with open(path, "rb") as fh:
        offset = 0
        for number, line in enumerate(fh, 1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as bad:
                where = f"line {number}, byte {offset + bad.start}: {bad.reason}"
                break
            offset += len(line)
    return UserError(f"{path}: not valid {encoding} text ({where}); {hint}")
