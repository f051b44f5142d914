"""What a model costs: parameters, size on disk, CPU latency and throughput.

Quality and fidelity metrics are pure functions in `metrics.py`; this module times models, so nothing in the
test suite asserts on its numbers, only on their presence.
"""

import os
import statistics
import time
from collections.abc import Callable

import torch

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for the 'where' of a timing."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def size_on_disk(directory: str) -> int:
    """Bytes of the weight files in a saved model directory."""
    return sum(
        os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory) if n.endswith(_WEIGHT_SUFFIXES)
    )


@torch.inference_mode()
def measure_speed(
    model: torch.nn.Module,
    rows: list[dict],
    collate: Callable[[list[dict]], dict],
    batches: int = 20,
    batch_size: int = 64,
) -> dict[str, float]:
    """Median and p95 latency at batch 1 (ms) and throughput at batch `batch_size` (rows/s) on real rows.

    Rows are taken in order and cycled, so two models measured on the same rows see the same lengths.
    """
    if batches < 1:
        raise ValueError(f"measure_speed needs at least one batch, got {batches}")
    model.eval()
    warmup = 3

    def batch_of(start: int, size: int) -> dict:
        chunk = [rows[(start + i) % len(rows)] for i in range(size)]
        return collate(chunk)

    singles = [batch_of(i, 1) for i in range(batches + warmup)]
    times = []
    for i, batch in enumerate(singles):
        t0 = time.perf_counter()
        model(**batch)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    big = [batch_of(i * batch_size, batch_size) for i in range(max(1, batches // 4) + 1)]
    model(**big[0])  # warm-up
    t0 = time.perf_counter()
    for batch in big[1:]:
        model(**batch)
    elapsed = time.perf_counter() - t0
    times.sort()
    return {
        "latency_ms_b1": statistics.median(times),
        "latency_ms_b1_p95": times[min(len(times) - 1, int(0.95 * len(times)))],
        f"throughput_b{batch_size}": batch_size * (len(big) - 1) / elapsed,
        "torch_threads": torch.get_num_threads(),
    }
