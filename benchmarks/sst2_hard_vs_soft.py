"""SST-2 with the MiniLM-L6 teacher: one `kdistill run` with hard labels, one with soft labels, side by side.

    python benchmarks/sst2_hard_vs_soft.py                 # both legs (the soft leg reuses the hard leg's teacher)
    python benchmarks/sst2_hard_vs_soft.py --legs soft     # one leg; the other is read from its run directory
    python benchmarks/sst2_hard_vs_soft.py --legs          # no leg: collect finished ones into the table/JSON

Each leg is the exact `kdistill run` command printed in the table; its wall time is measured here and stored in
<run dir>/wall_seconds.json. Writes benchmarks/results/sst2_hard_vs_soft.json and prints a table.
One seed, one epoch: this shows the pipeline end to end, not a soft-vs-hard verdict (that needs seeds and
intervals: issue `kdistill compare`).
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/sst2_minilm.yaml"
LEGS = {
    "hard": ["kdistill", "run", "--config", CONFIG, "--strategy", "hard", "--output_dir", "runs/sst2-hard"],
    "soft": ["kdistill", "run", "--config", CONFIG, "--strategy", "soft", "--temperature", "2",
             "--output_dir", "runs/sst2-soft", "--no_teacher_train", "--teacher_model", "runs/sst2-hard/teacher"],
}


def run_leg(name: str) -> None:
    out = LEGS[name][LEGS[name].index("--output_dir") + 1]
    start = time.perf_counter()
    # The kdistill installed beside this Python, so the script works without an activated venv.
    exe = os.path.join(os.path.dirname(sys.executable), "kdistill")
    subprocess.run([exe if os.path.exists(exe) else "kdistill", *LEGS[name][1:]], cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    with open(os.path.join(ROOT, out, "wall_seconds.json"), "w") as fh:
        json.dump({"wall_seconds": wall, "command": " ".join(LEGS[name])}, fh)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legs", nargs="*", default=list(LEGS), choices=list(LEGS),
                        help="legs to run (none: only collect the finished ones)")
    args = parser.parse_args()
    for name in args.legs:
        run_leg(name)

    results = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "legs": {},
    }
    for name, command in LEGS.items():
        out = os.path.join(ROOT, command[command.index("--output_dir") + 1])
        if not os.path.exists(os.path.join(out, "eval.json")):
            continue
        leg = json.load(open(os.path.join(out, "eval.json")))
        leg["command"] = " ".join(command)
        wall = os.path.join(out, "wall_seconds.json")
        leg["wall_seconds"] = json.load(open(wall))["wall_seconds"] if os.path.exists(wall) else None
        leg["distill"] = {k: v for k, v in json.load(open(os.path.join(out, "student", "distill_results.json"))).items()
                          if k not in ("log_history", "loss_curve")}
        teach = os.path.join(out, "teacher", "teach_results.json")
        if os.path.exists(teach):
            leg["teach"] = {k: v for k, v in json.load(open(teach)).items() if k != "loss_curve"}
        results["legs"][name] = leg

    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "sst2_hard_vs_soft.json"), "w") as fh:
        json.dump(results, fh, indent=2)

    rows = [("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("ECE", "ece"), ("agreement", "agreement"),
            ("KL(t||s)", "kl_to_teacher"), ("epsilon", "epsilon"), ("latency b1 ms", "latency_ms_b1"),
            ("rows/s b64", "throughput_b64")]
    names = list(results["legs"])
    print(f"SST-2 dev (GLUE), {results['date']}, {results['machine']}")
    print(f"{'metric':<16}" + "".join(f"{n + ' student':>16}" for n in names) + f"{'teacher':>16}")
    for title, key in rows:
        cells = [results["legs"][n]["student"].get(key) for n in names]
        teacher = results["legs"][names[0]]["teacher"].get(key) if names else None
        print(f"{title:<16}" + "".join(f"{c:>16.4f}" if c is not None else f"{'-':>16}" for c in [*cells, teacher]))
    for n in names:
        wall = results["legs"][n]["wall_seconds"]
        print(f"{n}: wall {wall:.0f} s" if wall else f"{n}: wall not recorded", "|", results["legs"][n]["command"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
