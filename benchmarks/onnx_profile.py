"""Where the exported student spends its batch-1 time, fp32 against int8: why int8 gains less than its MatMuls (issue 7).

    python benchmarks/onnx_profile.py                       # runs/sst2-hard/export, torch's threads (2 here)
    OMP_NUM_THREADS=1 python benchmarks/onnx_profile.py --name onnx_profile_1thread

Runs `model.onnx` and `model.int8.onnx` of an export directory under ONNX Runtime's profiler, one row at a time over
the first `--rows` rows of the run's evaluation set (SST-2 dev (GLUE)), the two models taking turns every 50 rows, and
sums each operator type's kernel time per row. The operators int8 changes are the weight MatMuls (fp32: MatMul,
Gemm, FusedMatMul, FusedGemm and the bias Adds; int8: DynamicQuantizeMatMul, MatMulIntegerToFloat, which take the
bias in, DynamicQuantizeLinear, MatMulInteger, DequantizeLinear for the embeddings, and the Adds left); the rest (layer norms, attention, GELU, shapes) is the same
work in both, and bounds the whole model's speed-up (Amdahl). The profiler adds its own overhead to every node, so absolute times are
inflated and only the split is read. Writes benchmarks/results/<name>.json (a `summary`) and .md.
"""

import argparse
import collections
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_env  # noqa: E402

WARMUP = 20  # runs per model left out of the sums
BLOCK = 50  # rows each model runs before the other takes its turn

# "Add" too: fp32 adds each projection's bias in a separate node, int8's MatMul kernels take the bias in.
CHANGED_BY_INT8 = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "Add", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                   "DynamicQuantizeLinear", "MatMulInteger", "DequantizeLinear"}


def profile(paths: dict[str, str], feeds: list[dict], threads: int) -> dict[str, dict]:
    """Kernel microseconds per row by operator type, and the whole run's, from ONNX Runtime's profiler, per model.

    The models take turns in blocks of BLOCK rows, so load from elsewhere lands on both alike. (Row by row would
    be fairer still, but each session's idle threads spin for a while after a run and would slow the other's.)
    """
    import onnxruntime as ort

    sessions = {}
    for name, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="onnx_profile-"), name)
        sessions[name] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for i in range(0, len(feeds), BLOCK):
        for session in sessions.values():
            for feed in feeds[i:i + BLOCK]:
                session.run(None, feed)
    out = {}
    for name, session in sessions.items():
        trace = session.end_profiling()
        with open(trace) as f:
            events = json.load(f)
        os.remove(trace)
        out[name] = summarise(events, len(feeds))
    return out


def summarise(events: list[dict], rows: int) -> dict:
    """Per-row kernel time by operator type from a profiler trace (the first `WARMUP` runs of it left out)."""
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    start = runs[WARMUP] if len(runs) > WARMUP else 0
    kernel, calls = collections.Counter(), collections.Counter()
    run_us, n = 0.0, rows - WARMUP
    for e in events:
        if e.get("ts", 0) < start:
            continue
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            kernel[e["args"]["op_name"]] += e["dur"]
            calls[e["args"]["op_name"]] += 1
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            run_us += e["dur"]
    ops = {op: {"us_per_row": us / n, "nodes_per_row": calls[op] / n} for op, us in kernel.most_common()}
    changed = sum(v["us_per_row"] for op, v in ops.items() if op in CHANGED_BY_INT8)
    total = sum(v["us_per_row"] for v in ops.values())
    return {"run_us_per_row": run_us / n, "kernel_us_per_row": total, "changed_by_int8_us_per_row": changed,
            "same_in_both_us_per_row": total - changed, "ops": ops}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export_dir", default=os.path.join(ROOT, "runs", "sst2-hard", "export"))
    parser.add_argument("--run_dir", default=None, help="the run the export came from (default: its parent)")
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--name", default="onnx_profile")
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from kdistill import export as ex

    run_dir = args.run_dir or os.path.dirname(os.path.abspath(args.export_dir))
    tokenizer = AutoTokenizer.from_pretrained(args.export_dir)
    run = ex.load_run(run_dir)
    rows, _, source = ex.eval_rows(ex.data_config(run), tokenizer, run.label2id, args.rows)
    collate = ex.pad(tokenizer)
    feeds = [{k: v.numpy().astype(np.int64) for k, v in collate([r]).items()} for r in rows]
    threads = torch.get_num_threads()
    models = profile({"fp32": os.path.join(args.export_dir, ex.FP32_FILE),
                      "int8": os.path.join(args.export_dir, ex.INT8_FILE)}, feeds, threads)
    fp32, int8 = models["fp32"], models["int8"]
    summary = {
        "rows": len(feeds), "threads": threads,
        "changed_ops_speedup": fp32["changed_by_int8_us_per_row"] / int8["changed_by_int8_us_per_row"],
        "kernel_speedup": fp32["kernel_us_per_row"] / int8["kernel_us_per_row"],
        "run_speedup": fp32["run_us_per_row"] / int8["run_us_per_row"],
        "fp32_share_same_in_both": fp32["same_in_both_us_per_row"] / fp32["kernel_us_per_row"],
    }
    # Amdahl: the whole-model speed-up if int8 sped its operators up as measured and nothing else changed.
    share = summary["fp32_share_same_in_both"]
    summary["amdahl_kernel_speedup"] = 1 / (share + (1 - share) / summary["changed_ops_speedup"])
    result = {**bench_env.provenance(), "export_dir": os.path.relpath(os.path.abspath(args.export_dir), ROOT),
              "eval_source": source, "summary": summary, "models": models}
    bench_env.write_results(args.results_dir, args.name, result, table(result))
    return 0


def table(result: dict) -> str:
    s, m = result["summary"], result["models"]
    lines = [
        "# Where the student's batch-1 time goes under ONNX Runtime, fp32 against int8",
        "",
        f"- **Date**: {result['date']}. **Machine**: {result['machine']['cpu']}, {result['machine']['cores']} cores; "
        f"{s['threads']} thread(s) for ONNX Runtime.",
        bench_env.versions_line(result),
        f"- **Command**: `{result['command']}`, on `{result['export_dir']}`, the first {s['rows']} rows of "
        f"`{result['eval_source']}`, one at a time. Profiler times are inflated by the profiler; read the split.",
        "",
        "| | fp32 (µs per row) | int8 (µs per row) | int8 speed-up |",
        "|---|---|---|---|",
        f"| operators int8 changes (weight MatMuls with their bias Adds, activation quantisation) | {m['fp32']['changed_by_int8_us_per_row']:.0f} "
        f"| {m['int8']['changed_by_int8_us_per_row']:.0f} | {s['changed_ops_speedup']:.2f}x |",
        f"| the rest (layer norms, attention, GELU, shapes) | {m['fp32']['same_in_both_us_per_row']:.0f} | "
        f"{m['int8']['same_in_both_us_per_row']:.0f} | - |",
        f"| all kernels | {m['fp32']['kernel_us_per_row']:.0f} | {m['int8']['kernel_us_per_row']:.0f} | "
        f"{s['kernel_speedup']:.2f}x |",
        f"| whole run | {m['fp32']['run_us_per_row']:.0f} | {m['int8']['run_us_per_row']:.0f} | {s['run_speedup']:.2f}x |",
        "",
        f"The rest is {100 * s['fp32_share_same_in_both']:.0f}% of fp32's kernel time; with int8's operators "
        f"{s['changed_ops_speedup']:.2f}x faster and the rest unchanged, the kernels could gain at most "
        f"{s['amdahl_kernel_speedup']:.2f}x.",
        "",
        "Operator types, µs per row (nodes per row):",
        "",
    ]
    for name in ("fp32", "int8"):
        ops = m[name]["ops"]
        lines.append(f"- {name}: " + ", ".join(f"{op} {v['us_per_row']:.0f} ({v['nodes_per_row']:.0f})"
                                              for op, v in list(ops.items())[:14]) + ".")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
