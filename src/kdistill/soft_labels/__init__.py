"""The teacher's outputs as data: produced once, stored on disk under a fingerprint, read back by row, lazily.

- fingerprint.py: what produced a cache (teacher files, data bytes, settings), as one digest;
- cache.py: the file layout (format v2, ragged, dense or top-k) and its lazy reader, SoftLabels;
- writer.py: CacheWriter, which streams a cache to disk in chunks;
- produce.py: running a teacher over rows.
"""

from .cache import SoftLabels, cache_path, check_finite, read_cache
from .fingerprint import fingerprint, hash_files
from .produce import predict_logits
from .writer import CacheWriter, write_cache

__all__ = ["CacheWriter", "SoftLabels", "cache_path", "check_finite", "fingerprint", "hash_files", "predict_logits",
           "read_cache", "write_cache"]
