"""The teacher's outputs as data: produced once, stored on disk under a fingerprint, read back by row, lazily.

- fingerprint.py: what produced a cache (teacher files, data bytes, settings) as one digest;
- cache.py: the file format, its writer and its reader;
- produce.py: running a teacher over rows.
"""

from .cache import cache_path, check_finite, read_cache, write_cache
from .fingerprint import fingerprint, hash_files
from .produce import predict_logits

__all__ = ["cache_path", "check_finite", "fingerprint", "hash_files", "predict_logits", "read_cache", "write_cache"]
