"""Does README.md's `kdistill demo` table match what `kdistill demo` prints on this machine? (and --write makes it so)

    python benchmarks/readme_demo.py                      # run the demo here, compare its table with README.md's
    python benchmarks/readme_demo.py --results runs/demo  # compare a finished demo's results.json instead (seconds)
    python benchmarks/readme_demo.py --avx2               # with PyTorch, MKL and oneDNN held to AVX2 kernels
    python benchmarks/readme_demo.py --write              # put this machine's table into README.md

The demo's figures depend on the CPU's floating-point kernels (AVX2 against AVX-512/VNNI/AMX give different tables;
two runs on one machine agree exactly), so README.md says on which CPU its table was made. This script is how that
table is kept current: the table is rebuilt from results.json with the demo's own formatter
(kdistill.report.demo.format_table), compared line by line with the block under README's "Its table", and with
--write copied into it (then update the sentence above the block: date and CPU, printed here).
Writes benchmarks/results/readme_demo.{json,md} with a top-level `summary`; prints the comparison.
"""

import argparse
import difflib
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_env  # noqa: E402

README = os.path.join(ROOT, "README.md")
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
MARKER = "Its table, from `kdistill demo`"


def readme_block(text: str) -> tuple[int, int]:
    """The line range [start, end) of the table block after MARKER (the lines between its ``` fences)."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if MARKER in line)
    start = next(i for i in range(at, len(lines)) if lines[i].startswith("```")) + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    return start, end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", help="a finished demo's output directory (holds results.json); default: run it")
    parser.add_argument("--avx2", action="store_true", help="run the demo with AVX2 kernels only (" +
                        " ".join(f"{k}={v}" for k, v in AVX2.items()) + ")")
    parser.add_argument("--write", action="store_true", help="copy this machine's table into README.md")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "src"))
    from kdistill.report.demo import format_table

    with tempfile.TemporaryDirectory() as tmp:
        directory = args.results or os.path.join(tmp, "demo")
        if not args.results:
            env = {**os.environ, **(AVX2 if args.avx2 else {}), "PYTHONPATH": os.path.join(ROOT, "src")}
            subprocess.run([sys.executable, "-m", "kdistill.cli", "demo", "--output_dir", directory], env=env,
                           check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(directory, "results.json"), encoding="utf-8") as fh:
            results = json.load(fh)
    # README shows the table without its last line (time taken and where the report went: this run's own).
    table = [line.rstrip() for line in format_table(results).splitlines() if not line.startswith("took ")]
    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    start, end = readme_block(text)
    lines = text.splitlines()
    shown = lines[start:end]
    diff = list(difflib.unified_diff(shown, table, "README.md", "this machine", lineterm=""))
    machine = bench_env.machine()
    if args.write and diff:
        with open(README, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines[:start] + table + lines[end:]) + "\n")
    summary = {"matches_readme": not diff, "written": bool(args.write and diff), "avx2_kernels": args.avx2,
               "cpu_flags": machine["cpu_flags"], "differing_lines": sum(1 for d in diff if d.startswith("+")
                                                                          and not d.startswith("+++"))}
    result = {"summary": summary, "date": bench_env.now_utc(), "machine": machine, "versions": bench_env.versions(),
              "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
              "table": table, "readme_table": shown, "diff": diff}
    report = [f"# README's demo table against this machine's ({result['date']})", "",
              f"Machine: {machine['cpu']} ({', '.join(machine['cpu_flags'])}); AVX2 kernels only: {args.avx2}. "
              f"Command: `{result['command']}`", "",
              "The table matches README.md." if not diff else "README.md's table differs here:", "",
              "```", *(diff or table), "```"]
    bench_env.write_results(args.out, "readme_demo_avx2" if args.avx2 else "readme_demo", result,
                            "\n".join(report) + "\n")


if __name__ == "__main__":
    main()
