"""How long a user waits for kdistill to say their config is wrong: seconds from the command to the one-line error.

    python benchmarks/error_latency.py                          # this checkout's src/
    python benchmarks/error_latency.py --before /path/to/old/src # and an older tree, interleaved in one run

Three mistakes, each a fresh `python -m kdistill.cli run --config FILE` process (what a user's shell starts): an
unknown key (a YAML typo), a bad value (temperature -1), and a data file that does not exist. Each is run
`--repeats` times, the trees taking turns, and the median wall time is reported. Target: under 2 s for each.
Writes benchmarks/results/error_latency.{json,md} with a top-level `summary`; prints the table.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_env  # noqa: E402

TARGET_S = 2.0
TRAIN = os.path.join(ROOT, "..", "shared", "data", "sst2", "train.tsv")
CASES = {
    "unknown key": "data:\n  train_fil: {train}\n",
    "bad value": "data:\n  train_file: {train}\ndistill:\n  temperature: -1\n",
    "missing file": "data:\n  train_file: {missing}\n",
}


def one_error(src: str, config: str) -> tuple[float, str]:
    """Wall seconds of one CLI process that must fail with a one-line error, and that line."""
    env = {**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kdistill.cli", "run", "--config", config], capture_output=True,
                          text=True, env=env, timeout=300)
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode != 2 or not lines or not lines[-1].startswith("kdistill: error: "):
        raise SystemExit(f"{config} under {src}: expected a one-line error and exit 2, got {proc.returncode}: "
                         f"{proc.stderr[-500:]}")
    return seconds, lines[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="the src/ directory of an older kdistill, measured in the same run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    trees = {"after": os.path.join(ROOT, "src")}
    if args.before:
        trees = {"before": os.path.abspath(args.before), **trees}
    work = tempfile.mkdtemp(prefix="kdistill-latency-")
    configs = {}
    for case, text in CASES.items():
        configs[case] = os.path.join(work, case.replace(" ", "_") + ".yaml")
        with open(configs[case], "w", encoding="utf-8") as fh:
            fh.write(text.format(train=os.path.abspath(TRAIN), missing=os.path.join(work, "nope.tsv")))
    times = {tree: {case: [] for case in CASES} for tree in trees}
    messages = {tree: {} for tree in trees}
    for _ in range(args.repeats):
        for case in CASES:
            for tree, src in trees.items():  # the trees take turns, so a busy moment falls on both
                seconds, line = one_error(src, configs[case])
                times[tree][case].append(seconds)
                messages[tree][case] = line
    medians = {tree: {case: statistics.median(v) for case, v in by_case.items()} for tree, by_case in times.items()}
    summary = {"median_seconds": medians, "target_seconds": TARGET_S,
               "met": {case: medians["after"][case] < TARGET_S for case in CASES}}
    result = {**bench_env.provenance(), "trees": trees, "repeats": args.repeats, "times": times,
              "messages": messages, "summary": summary}
    lines = [f"seconds from `kdistill run --config FILE` to the one-line error (median of {args.repeats})", "",
             f"{'mistake':<16}" + "".join(f"{tree:>10}" for tree in trees) + "   target", "-" * 52]
    for case in CASES:
        lines.append(f"{case:<16}" + "".join(f"{medians[tree][case]:>10.2f}" for tree in trees) +
                     f"   {'< 2 s (met)' if summary['met'][case] else '< 2 s (missed)'}")
    table = "\n".join(lines)
    m = result["machine"]
    header = (f"# Error latency\n\n- **Date**: {result['date']}. **Machine**: {m['cpu']} "
              f"({', '.join(m['cpu_flags'])}), {m['cores']} cores, Python {m['python']}.\n"
              f"{bench_env.versions_line(result)}\n- **Command**: `{result['command']}`; trees: "
              + ", ".join(f"{k} `{v}`" for k, v in trees.items()) + ".\n")
    bench_env.write_results(args.results_dir, "error_latency", result, f"{header}\n```\n{table}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
