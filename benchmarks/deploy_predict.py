"""`kdistill predict` on an export without torch: cold-start time for one text, and a 10,000-line file's throughput
against ONNX Runtime's own on the same batches.

    python benchmarks/deploy_predict.py --export RUN_DIR/export [--student RUN_DIR/student] [--lines 10000]

Cold start: a fresh `python -m kdistill.cli predict EXPORT "one text"` process (what a user's shell starts), wall
seconds, median of --repeats; with --student, the PyTorch path on the run's student is timed in the same rounds
(turn about). Target: under 2 s.

Throughput: the file is SST-2 training sentences, one a line. "ONNX Runtime's own" is session.run alone on the very
batches predict makes (windows of 1,024 lines sorted by length and cut into batches of at most 64 texts of similar
length, tokenised and padded beforehand, outside the clock); "predict" is
everything `predict --file --json` does in-process: reading the file, tokenising, running, softmax, and writing a
JSON line per text (to /dev/null). The two take turns, --rounds times; the ratio of medians is reported. Target:
predict at no less than 90% of ONNX Runtime's throughput.
Writes benchmarks/results/deploy_predict.{json,md} with a top-level `summary`; prints the table.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_env  # noqa: E402

SST2_TRAIN = os.path.join(ROOT, "..", "shared", "data", "sst2", "train.tsv")
COLD_TARGET_S, THROUGHPUT_TARGET = 2.0, 0.90


def cold_start(model_dir: str, repeats: int, extra: list[str] | None = None) -> list[float]:
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "kdistill.cli", "predict", model_dir, "a gorgeous , witty movie",
                               *(extra or [])], capture_output=True, text=True, env=env, timeout=300)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"predict failed on {model_dir}: {proc.stderr.strip()}")
    return times


def sentences(n: int) -> list[str]:
    with open(SST2_TRAIN, encoding="utf-8") as fh:
        next(fh)
        rows = [line.split("\t")[0].strip() for line in fh]
    return [r for r in rows if r][:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="an export directory (kdistill export RUN_DIR --format onnx)")
    parser.add_argument("--student", help="the run's student/ directory, to time the PyTorch path's cold start too")
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()

    sys.path.insert(0, os.path.join(ROOT, "src"))
    from kdistill.deploy.runtime import STREAM_WINDOW, ExportedModel, read_texts

    # Cold start, the two paths taking turns.
    cold = {"export (ONNX Runtime, no torch)": [], "student (PyTorch)": []}
    for _ in range(args.repeats):
        cold["export (ONNX Runtime, no torch)"] += cold_start(args.export, 1)
        if args.student:
            cold["student (PyTorch)"] += cold_start(args.student, 1)
    cold = {k: v for k, v in cold.items() if v}

    texts = sentences(args.lines)
    model = ExportedModel.load(args.export)
    # The very batches predict_stream makes: windows of STREAM_WINDOW batches, each sorted by length and cut.
    window = args.batch_size * STREAM_WINDOW
    batches = [feed for i in range(0, len(texts), window)
               for _, feed in model.batches(texts[i:i + window], args.batch_size)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "texts.txt")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("\n".join(texts) + "\n")
        raw, ours = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for feed in batches:
                model.run(feed)
            raw.append(time.perf_counter() - start)
            start = time.perf_counter()
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                for text, prediction in model.predict_stream(read_texts(path), args.batch_size):
                    print(json.dumps({"text": text, **prediction}))
            ours.append(time.perf_counter() - start)
    ratio = statistics.median(raw) / statistics.median(ours)
    export_cold = statistics.median(cold["export (ONNX Runtime, no torch)"])
    summary = {
        "cold_start_s_export": export_cold,
        "cold_start_s_pytorch_student": statistics.median(cold["student (PyTorch)"]) if args.student else None,
        "cold_start_target_s": COLD_TARGET_S,
        "cold_start_met": export_cold < COLD_TARGET_S,
        "lines": len(texts),
        "texts_per_s_onnxruntime": len(texts) / statistics.median(raw),
        "texts_per_s_predict": len(texts) / statistics.median(ours),
        "predict_over_onnxruntime_throughput": ratio,
        "throughput_target": THROUGHPUT_TARGET,
        "throughput_met": ratio >= THROUGHPUT_TARGET,
    }
    result = {"summary": summary, "date": bench_env.now_utc(), "machine": bench_env.machine(),
              "versions": bench_env.versions(),
              "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
              "export": os.path.abspath(args.export), "cold_start_s": cold,
              "seconds": {"onnxruntime": raw, "predict": ours}, "batch_size": args.batch_size,
              "model_threads": model.session.get_session_options().intra_op_num_threads}
    lines = [
        f"# kdistill predict on an export, without torch ({result['date']})", "",
        f"Machine: {result['machine']['cpu']} ({', '.join(result['machine']['cpu_flags'])}), "
        f"{result['machine']['cores']} cores. Command: `{result['command']}`", "",
        "| measure | value | target |", "|---|---|---|",
        *[f"| cold start, one text: {k} (median of {len(v)}) | {statistics.median(v):.2f} s | "
          f"{'< 2 s' if 'export' in k else '-'} |" for k, v in cold.items()],
        f"| {len(texts)}-line file: ONNX Runtime alone, same batches | {summary['texts_per_s_onnxruntime']:.0f} texts/s | - |",
        f"| {len(texts)}-line file: predict --file --json (read, tokenise, run, write) | "
        f"{summary['texts_per_s_predict']:.0f} texts/s | - |",
        f"| predict / ONNX Runtime throughput | {ratio:.3f} | >= {THROUGHPUT_TARGET} |",
    ]
    bench_env.write_results(args.out, "deploy_predict", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
