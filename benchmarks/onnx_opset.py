"""Does exporting at ONNX opset 23 (one standard Attention node) speed the student up? Opset 20 against 23 (issue 7).

    python benchmarks/onnx_opset.py                     # runs/sst2-hard's student, torch's threads (2 here)
    OMP_NUM_THREADS=1 python benchmarks/onnx_opset.py --name onnx_opset_1thread

`kdistill export` writes opset 23 since 2026-11-28; before, the exporter's default (opset 20) spelt attention out as
MatMul, Mul, Softmax, Where, IsNaN, ... nodes. This script exports the same student both ways with
`kdistill.export.export_onnx`, quantises both with `kdistill.export.quantize_int8`, checks that the two opsets give
the same logits (fp32 and int8), and times the four models round-robin in one process: `--rounds` rounds, each of
`--batches` batch-1 calls and batch-64 passes over the same rows, medians over rounds. Ratios are taken within the
run. Writes benchmarks/results/<name>.json (a `summary`) and .md, and prints the table.
"""

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_env  # noqa: E402

OLD, NEW = 20, 23


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", default=os.path.join(ROOT, "runs", "sst2-hard"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=200, help="batch-1 calls per model and round")
    parser.add_argument("--name", default="onnx_opset")
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()

    import onnx
    import torch

    from kdistill import export as ex
    from kdistill.soft_labels import predict_logits
    from kdistill.students import load_classifier, load_tokenizer

    start = time.perf_counter()
    run = ex.load_run(args.run_dir)
    student = load_classifier(run.student_dir, "student").eval()
    tokenizer = load_tokenizer(run.student_dir, "student tokenizer")
    rows, labels, source = ex.eval_rows(ex.data_config(run), tokenizer, run.label2id, 10**9)
    collate = ex.pad(tokenizer)
    threads = torch.get_num_threads()

    tmp = tempfile.mkdtemp(prefix="onnx_opset-")
    paths, graphs = {}, {}
    for opset in (OLD, NEW):
        fp32, int8 = os.path.join(tmp, f"opset{opset}.onnx"), os.path.join(tmp, f"opset{opset}.int8.onnx")
        ex.export_onnx(student, tokenizer, fp32, opset=opset)
        ex.quantize_int8(fp32, int8)
        for precision, path in (("fp32", fp32), ("int8", int8)):
            key = f"opset {opset} {precision}"
            paths[key] = path
            ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
            graphs[key] = {"nodes": sum(ops.values()), "op_types": dict(ops.most_common()),
                           "size_mb": os.path.getsize(path) / 1e6}

    models = {k: ex.OnnxClassifier(p, threads=threads) for k, p in paths.items()}
    logits = {k: predict_logits(m, rows, collate, batch_size=64) for k, m in models.items()}
    with torch.no_grad():
        reference = predict_logits(student, rows, collate, batch_size=64)
    checks = {k: {"max_abs_diff_to_pytorch": float((v - reference).abs().max()),
                  "accuracy": float((v.argmax(-1) == labels).float().mean())} for k, v in logits.items()}
    for precision in ("fp32", "int8"):
        a, b = logits[f"opset {OLD} {precision}"], logits[f"opset {NEW} {precision}"]
        checks[f"{precision}: opset {NEW} vs {OLD}"] = {"max_abs_diff": float((a - b).abs().max()),
                                                        "top1_differences": int((a.argmax(-1) != b.argmax(-1)).sum())}

    b1 = [collate([r]) for r in rows[: args.batches]]
    b64 = [collate(rows[i:i + 64]) for i in range(0, len(rows) - 63, 64)]
    times = bench_env.round_robin(models, b1, b64, args.rounds, warmup=10, after_round=lambda r, times: print(
        f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {times[k]['b1'][-1]:.2f} ms" for k in models), flush=True))
    speed = {k: {"latency_ms_b1": statistics.median(t["b1"]), "throughput_b64": statistics.median(t["b64"]),
                 "latency_ms_b1_rounds": t["b1"], "throughput_b64_rounds": t["b64"]} for k, t in times.items()}

    def ratio(fast: str, slow: str) -> dict:
        return {"b1": speed[slow]["latency_ms_b1"] / speed[fast]["latency_ms_b1"],
                "b64": speed[fast]["throughput_b64"] / speed[slow]["throughput_b64"]}

    summary = {
        "rows": len(rows), "threads": threads,
        "nodes": {k: g["nodes"] for k, g in graphs.items()},
        "int8_over_fp32": {opset: ratio(f"opset {opset} int8", f"opset {opset} fp32") for opset in (OLD, NEW)},
        f"opset{NEW}_over_opset{OLD}": {p: ratio(f"opset {NEW} {p}", f"opset {OLD} {p}") for p in ("fp32", "int8")},
        "same_predictions": all(checks[f"{p}: opset {NEW} vs {OLD}"]["top1_differences"] == 0 for p in ("fp32", "int8")),
        "load_end": bench_env.load1(),
    }
    result = {**bench_env.provenance(), "run_dir": os.path.relpath(os.path.abspath(args.run_dir), ROOT),
              "eval_source": source, "summary": summary, "graphs": graphs, "checks": checks, "speed": speed,
              "rounds": args.rounds, "batches": args.batches, "seconds": time.perf_counter() - start}
    bench_env.write_results(args.results_dir, args.name, result, table(result))
    return 0


def table(result: dict) -> str:
    s = result["summary"]
    lines = [
        f"# ONNX opset {OLD} against {NEW} for the exported student",
        "",
        f"- **Date**: {result['date']}. **Machine**: {result['machine']['cpu']}, {result['machine']['cores']} cores; "
        f"{s['threads']} thread(s) for ONNX Runtime. 1-minute load {result['load_start']:.2f} at the start, "
        f"{s['load_end']:.2f} at the end.",
        bench_env.versions_line(result),
        f"- **Command**: `{result['command']}`: the student of `{result['run_dir']}`, {s['rows']} rows of "
        f"`{result['eval_source']}`; {result['rounds']} round-robin rounds of {result['batches']} batch-1 calls and "
        f"batch-64 passes over the rows, medians over rounds.",
        "",
        "| model | nodes | size (MB) | max abs diff to PyTorch | accuracy | latency b=1 median (ms) | "
        "throughput b=64 (rows/s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, g in result["graphs"].items():
        c, sp = result["checks"][k], result["speed"][k]
        lines.append(f"| {k} | {g['nodes']} | {g['size_mb']:.1f} | {c['max_abs_diff_to_pytorch']:.2e} | "
                     f"{100 * c['accuracy']:.2f} | {sp['latency_ms_b1']:.2f} | {sp['throughput_b64']:.0f} |")
    lines.append("")
    for opset, r in s["int8_over_fp32"].items():
        lines.append(f"- int8 over fp32, opset {opset}: **{r['b1']:.2f}x** at batch 1, **{r['b64']:.2f}x** at batch 64.")
    for p, r in s[f"opset{NEW}_over_opset{OLD}"].items():
        lines.append(f"- opset {NEW} over {OLD}, {p}: {r['b1']:.2f}x at batch 1, {r['b64']:.2f}x at batch 64.")
    for p in ("fp32", "int8"):
        c = result["checks"][f"{p}: opset {NEW} vs {OLD}"]
        lines.append(f"- {p} logits, opset {NEW} against {OLD}: max |difference| {c['max_abs_diff']:.2e}, "
                     f"{c['top1_differences']} top-1 differences.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
