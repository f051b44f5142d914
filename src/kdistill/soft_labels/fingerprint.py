"""What produced a split's soft labels, as one digest: the teachers' files, the data file's bytes and the settings."""

import hashlib
import json
import os
from collections.abc import Iterable, Sequence

# Mixed into every fingerprint: a cache written by another format version is never mistaken for this one's.
CACHE_FORMAT = "kdistill-soft-labels-v2"
_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")
_HASH_MEMO: dict[tuple, str] = {}


def hash_files(paths: Iterable[str]) -> str:
    """SHA-256 over the bytes of files (directories: their model/tokenizer files, sorted by name).

    A process remembers the digest of files it has hashed, keyed by each file's path, size, modification time and
    inode, so a sweep that checks the same 91 MB teacher for every split of every cell reads it once.
    """
    parts: list[tuple[str, str | None]] = []  # (hub name, None) or (basename, file path)
    for path in paths:
        if path is None:
            continue
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.endswith(_HASHED_SUFFIXES) and n != "training_args.bin")
            parts += [(n, os.path.join(path, n)) for n in names]
        elif os.path.isfile(path):
            parts.append((os.path.basename(path), path))
        else:
            # A hub name: its identity is the name (online users get the revision the hub serves).
            parts.append((path, None))
    key = []
    for name, file in parts:
        if file is None:
            key.append((name,))
        else:
            st = os.stat(file)
            key.append((name, os.path.realpath(file), st.st_size, st.st_mtime_ns, st.st_ino))
    key = tuple(key)
    if key in _HASH_MEMO:
        return _HASH_MEMO[key]
    h = hashlib.sha256()
    for name, file in parts:
        h.update(name.encode())
        if file is None:
            continue
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    _HASH_MEMO[key] = h.hexdigest()
    return _HASH_MEMO[key]


def fingerprint(teachers: str | Sequence[str], data_file: str | None, settings: dict,
                cache_format: str = CACHE_FORMAT) -> str:
    """Fingerprint of what produces a split's soft labels: teachers' files + data bytes + settings.

    digest = SHA-256(CACHE_FORMAT, hash_files([teacher_1]), ..., hash_files([teacher_n]), hash_files([data_file])
    or nothing, JSON(settings, sorted keys)), as hex.

    Args:
        teachers: a teacher's directory (or hub name), or a list of them; each one's files are hashed on their own,
            in the order given (an ensemble in another order is another producer). One name and a list holding
            only that name give the same fingerprint.
        data_file: the file the rows come from (its bytes are hashed), or None for data named in `settings`.
        settings: anything else that changes the outputs (split, rows selected, tokenisation), JSON-able.
        cache_format: the format mixed in; "kdistill-soft-labels-v1" gives the digest a v1 cache of the same inputs
            was filed under (v1 took one teacher), so that cache can still be found and read.
    """
    names = [teachers] if isinstance(teachers, str) else list(teachers)
    if not names:
        raise ValueError("fingerprint needs at least one teacher")
    h = hashlib.sha256(cache_format.encode())
    for name in names:
        h.update(hash_files([name]).encode())
    h.update(hash_files([data_file]).encode() if data_file else b"")
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()
