"""The error type for mistakes a user can fix; light to import, so the CLI can catch it before loading torch."""

import errno
import os
import traceback
from typing import Any, NoReturn


class UserError(ValueError):
    """Something the user can fix (a file, a flag, a model); the CLI prints its message as one line."""


class ConfigError(UserError):
    """A configuration a user wrote is invalid; the message says what to change (kdistill.config re-exports it)."""


def raise_on_usage_error(parser: Any, prefix: str = "", error: type[UserError] = UserError) -> Any:
    """Make an argparse parser raise `error` on a bad command line instead of printing its usage and exiting.

    A bad flag is a user error like any other: one line on stderr (`kdistill: error: PREFIX: MESSAGE`), not argparse's
    usage dump (150 flags for the run config). Returns the parser.
    """

    def fail(message: str) -> NoReturn:
        raise error(f"{prefix}: {message}" if prefix else message)

    parser.error = fail
    return parser


# What an OSError's errno means to a user, in the words `kdistill: error:` prints.
_OS_ERROR_KINDS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.ENOENT: "not found",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error",
}
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# How a full disk reads once a library has wrapped it: safetensors' Rust error ("I/O error: No space left on device
# (os error 28)", "StorageFull"), Arrow's and others' messages.
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "storagefull", "disk quota exceeded")
# torch.save's zip writer after a short write, which is what a full disk gives it: "PytorchStreamWriter failed
# writing file data/0: file write failed", or "[enforce fail at inline_container.cc:672] . unexpected pos 6144 vs
# 6036" when the end of the file is what did not fit.
_SHORT_WRITE_TEXT = (("file write failed",), ("inline_container.cc", "unexpected pos"))
# Where a writer that wrapped the error held its path: torch.save(obj, f), safetensors' save_file(..., filename),
# save_pretrained(save_directory), Trainer._save_checkpoint's output_dir; the innermost frame's is the most exact.
_PATH_LOCALS = ("f", "filename", "file", "path", "save_directory", "output_dir")
# Less free than this where a short write happened is a full disk.
_FULL_BELOW = 64 << 20


def os_error_line(err: OSError) -> str:
    """One line for an OSError a user can fix: the path(s) and what went wrong, e.g. 'out/run_config.json:
    permission denied'."""
    kind = _OS_ERROR_KINDS.get(err.errno) or (err.strerror or str(err) or type(err).__name__).strip()
    if err.errno is None and "no space left on device" in str(err).lower():
        kind = _OS_ERROR_KINDS[errno.ENOSPC]  # pyarrow's OSError carries the words but no errno
    if err.errno in _DISK_FULL:
        kind += "; free some space or write elsewhere (output_dir)"
    elif err.errno == errno.EROFS:
        kind += "; write elsewhere (output_dir)"
    if err.filename is None:
        return kind if err.errno is not None else f"{kind} ({type(err).__name__})"
    where = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else str(err.filename)
    return f"{where}: {kind}"


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _written_path(err: BaseException) -> str | None:
    """The path the innermost writer in `err`'s traceback held (see _PATH_LOCALS), if any."""
    frames = [frame for frame, _ in traceback.walk_tb(err.__traceback__)]
    for frame in reversed(frames):
        for name in _PATH_LOCALS:
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)):
                return os.fspath(value)
    return None


def _free_bytes(path: str) -> int | None:
    """Bytes free to this user on the file system that holds `path` (or its nearest existing parent)."""
    import shutil

    directory = os.path.abspath(path)
    while directory and not os.path.isdir(directory):
        directory = os.path.dirname(directory) if os.path.dirname(directory) != directory else ""
    try:
        return shutil.disk_usage(directory).free if directory else None
    except OSError:
        return None


def write_failure_line(err: BaseException) -> str | None:
    """One line when `err`, whatever a library wrapped it in, is a file that could not be written for want of space
    (a checkpoint saved by torch.save or safetensors under the Trainer), naming the file from the traceback; None for
    anything else, which stays a traceback (a bug to report)."""
    for inner in _chain(err):
        if isinstance(inner, OSError) and inner.errno in _DISK_FULL and inner.filename is not None:
            return os_error_line(inner)
        text = str(inner).lower()
        full = isinstance(inner, OSError) and inner.errno in _DISK_FULL or any(t in text for t in _DISK_FULL_TEXT)
        short = isinstance(inner, RuntimeError) and any(all(t in text for t in ts) for ts in _SHORT_WRITE_TEXT)
        if full or short:
            path = _written_path(err)
            first = (str(inner).strip().splitlines() or [type(inner).__name__])[0]
            free = _free_bytes(path) if path else None
            if short and not full and (free is None or free >= _FULL_BELOW):
                # A short write with room to spare: a quota, a failing disk, a file too large for the file system.
                where = f"writing {path} failed" if path else "a file write failed"
                return f"{where} ({first}); check the disk it is on (full, over quota or failing)"
            where = f"writing {path}: " if path else ""
            return f"{where}no space left on device ({first}); free some space or write elsewhere (output_dir)"
    return None
