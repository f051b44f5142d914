"""Why int8 and fp32 disagree on a few SST-2 rows, and what the usual quantisation settings change (issue 7).

    python benchmarks/int8_variants.py                          # runs/sst2-hard/export (made by export_speed.py)
    python benchmarks/int8_variants.py --export_dir DIR --leave_one_out

`kdistill export --int8` quantises with ONNX Runtime's dynamic defaults: int8 weights per tensor, uint8 activations
scaled per batch. This script quantises the same fp32 `model.onnx` in the other ways ONNX Runtime offers (the dynamic
options; weight-only int8 in blocks (MatMulNBits), whose activations are quantised per block of 32 values instead of
per tensor; SmoothQuant-style scaling of activation channels into the weights; static quantisation calibrated on 256
training rows) and scores every variant on the run's test rows
(SST-2 dev (GLUE), 872 rows) against fp32:

- top-1 disagreements with fp32, and how close to a tie the fp32 answer was on those rows
  (`kdistill.metrics.disagreement_margins`), at batch 64 and at batch 1 (activation scales are per batch);
- accuracy change, max and mean |logit difference|, file size;
- with `--speed_batches N`, batch-1 latency and batch-64 throughput relative to fp32, timed round-robin in one run;
- with `--leave_one_out`, the default quantisation with each weight MatMul/Gemm in turn left in fp32, to find a
  layer that causes most of the error.

Writes benchmarks/results/int8_variants.json (a `summary`) and .md, and prints the table.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_env  # noqa: E402

# name: (what it is, method, keyword arguments). "dynamic": quantize_dynamic ("QUInt8" is resolved to the QuantType at
# run time; op_types_to_quantize defaults to kdistill's); "blockwise": MatMulNBitsQuantizer; "static": quantize_static.
VARIANTS = {
    "default": ("kdistill export --int8: int8 weights per tensor, every MatMul and the embedding Gather", "dynamic", {}),
    "per_channel": ("int8 weights per output channel", "dynamic", {"per_channel": True}),
    "matmul_only": ("embeddings (Gather) left in fp32", "dynamic", {"op_types_to_quantize": ["MatMul"]}),
    "per_channel_matmul_only": ("per channel, embeddings in fp32", "dynamic",
                                {"per_channel": True, "op_types_to_quantize": ["MatMul"]}),
    "reduce_range": ("7-bit weights, per channel (ORT's advice for AVX2 CPUs without VNNI)", "dynamic",
                     {"per_channel": True, "reduce_range": True}),
    "u8u8": ("uint8 weights and activations", "dynamic", {"weight_type": "QUInt8"}),
    "blockwise8": ("weight-only int8 in blocks of 32 (MatMulNBits, accuracy_level 4: activations quantised per block "
                   "of 32); embeddings fp32", "blockwise", {"bits": 8, "block_size": 32, "is_symmetric": True,
                                                            "accuracy_level": 4, "op_types_to_quantize": ("MatMul",)}),
    "smoothquant": ("SmoothQuant-style (Xiao et al. 2023, alpha 0.5): each weight MatMul's input divided per channel "
                    "by sqrt(activation range / weight range), measured on 256 training rows, and the weights "
                    "multiplied by it (an explicit Mul node), then the default", "smooth", {"alpha": 0.5}),
    "static_per_channel": ("static: activation scales fixed from 256 training rows (min-max), weights per channel; "
                           "embeddings fp32", "static", {"per_channel": True}),
}
CALIBRATION_ROWS = 256


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export_dir", default=os.path.join(ROOT, "runs", "sst2-hard", "export"))
    parser.add_argument("--run_dir", default=None, help="the run the export came from (default: its parent)")
    parser.add_argument("--leave_one_out", action="store_true")
    parser.add_argument("--speed_batches", type=int, default=0, help="timed batches per model and round (0: none)")
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()

    import numpy as np
    import onnx
    import torch
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from transformers import AutoTokenizer

    from kdistill import export as ex
    from kdistill.data import load_split, tokenize
    from kdistill.soft_labels import predict_logits

    run_dir = args.run_dir or os.path.dirname(os.path.abspath(args.export_dir))
    src = os.path.join(args.export_dir, ex.FP32_FILE)
    tokenizer = AutoTokenizer.from_pretrained(args.export_dir)
    run = ex.load_run(run_dir)
    rows, labels, source = ex.eval_rows(ex.data_config(run), tokenizer, run.label2id, 10**9)
    collate = ex.pad(tokenizer)
    threads = torch.get_num_threads()

    def score(path: str, batch_size: int) -> torch.Tensor:
        return predict_logits(ex.OnnxClassifier(path, threads=threads), rows, collate, batch_size=batch_size)

    start = time.perf_counter()
    fp32 = {b: score(src, b) for b in (64, 1)}
    tmp = tempfile.mkdtemp(prefix="int8_variants-")
    prepared = os.path.join(tmp, "prepared.onnx")
    quant_pre_process(src, prepared, skip_symbolic_shape=True)
    graph = onnx.load(prepared).graph
    inits = {i.name for i in graph.initializer}
    weight_nodes = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]

    data = ex.data_config(run)
    train = load_split(data, "train")
    train = train.select(range(min(CALIBRATION_ROWS, len(train))))
    calibration = ex.model_rows(tokenize(train, tokenizer, data, None), tokenizer)

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(collate(calibration[i:i + 16]) for i in range(0, len(calibration), 16))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {k: v.numpy().astype(np.int64) for k, v in batch.items()}

    def quantise(name: str, method: str, kwargs: dict) -> str:
        kwargs, path = dict(kwargs), os.path.join(tmp, f"{name}.onnx")
        if method == "blockwise":
            quantizer = MatMulNBitsQuantizer(onnx.load(prepared), **kwargs)
            quantizer.process()
            quantizer.model.save_model_to_file(path, use_external_data_format=False)
        elif method == "smooth":
            smoothed = os.path.join(tmp, f"{name}.fp32.onnx")
            smoothing[name] = smooth(prepared, smoothed, Calibration(), **kwargs)
            # the rewrite itself must not change the fp32 model
            smoothing[name]["fp32_max_abs_diff_after_rewrite"] = float((score(smoothed, 64) - fp32[64]).abs().max())
            quantize_dynamic(smoothed, path, weight_type=QuantType.QInt8, op_types_to_quantize=ex.int8_op_types())
        elif method == "static":
            quantize_static(prepared, path, Calibration(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, **kwargs)
        else:
            kwargs["weight_type"] = getattr(QuantType, kwargs.get("weight_type", "QInt8"))
            kwargs.setdefault("op_types_to_quantize", ex.int8_op_types())
            quantize_dynamic(prepared, path, **kwargs)
        return path

    def measure(path: str) -> dict:
        out = {"size_mb": os.path.getsize(path) / 1e6}
        for b in (64, 1):
            logits = score(path, b)
            fid = ex.int8_fidelity(fp32[b], logits, labels)
            out[f"batch{b}"] = {"agreement": fid["agreement_with_fp32"], **fid["flips"],
                                "accuracy_change_points": fid["accuracy_change_points"],
                                "max_abs_logit_diff": fid["max_abs_logit_diff"],
                                "mean_abs_logit_diff": float((logits - fp32[b]).abs().mean())}
        return out

    variants, paths, smoothing = {}, {}, {}
    for name, (what, method, kwargs) in VARIANTS.items():
        paths[name] = quantise(name, method, kwargs)
        variants[name] = {"what": what, "method": method, "kwargs": kwargs, **measure(paths[name])}
        print(f"{name}: {variants[name]['batch64']['disagreements']} flips at batch 64, "
              f"{variants[name]['batch1']['disagreements']} at batch 1", flush=True)

    leave_one_out = {}
    if args.leave_one_out:
        for node in weight_nodes:
            path = quantise("loo", "dynamic", {"nodes_to_exclude": [node]})
            m = measure(path)
            leave_one_out[node] = {"disagreements_b64": m["batch64"]["disagreements"],
                                   "mean_abs_logit_diff_b64": m["batch64"]["mean_abs_logit_diff"]}
            os.remove(path)

    speed = {}
    if args.speed_batches:
        models = {"fp32": ex.OnnxClassifier(src, threads=threads),
                  **{n: ex.OnnxClassifier(p, threads=threads) for n, p in paths.items()}}
        b1 = [collate([r]) for r in rows[: args.speed_batches]]
        b64 = [collate(rows[i:i + 64]) for i in range(0, min(len(rows), 64 * max(1, args.speed_batches // 8)), 64)]
        times = bench_env.round_robin(models, b1, b64, rounds=3, warmup=5)
        base = {k: statistics.median(v) for k, v in times["fp32"].items()}
        for n, t in times.items():
            lat, thr = statistics.median(t["b1"]), statistics.median(t["b64"])
            speed[n] = {"latency_ms_b1": lat, "throughput_b64": thr, "speedup_b1": base["b1"] / lat,
                        "speedup_b64": thr / base["b64"]}

    probs = torch.softmax(fp32[64], dim=-1).sort(dim=-1).values
    gap = probs[:, -1] - probs[:, -2]
    best = min(variants, key=lambda n: (variants[n]["batch64"]["disagreements"], -variants[n]["batch64"]["agreement"]))
    summary = {
        "rows": len(rows),
        "fp32_rows_within_0.05_of_a_tie": int((gap <= 0.05).sum()),
        "fp32_rows_within_0.10_of_a_tie": int((gap <= 0.10).sum()),
        "default_flips_b64": variants["default"]["batch64"]["disagreements"],
        "default_agreement_b64": variants["default"]["batch64"]["agreement"],
        "default_agreement_b1": variants["default"]["batch1"]["agreement"],
        "fewest_flips_variant": best,
        "fewest_flips_b64": variants[best]["batch64"]["disagreements"],
        "best_agreement_b64": variants[best]["batch64"]["agreement"],
        "agreement_target": ex.INT8_AGREEMENT_TARGET,
        "target_met_by_any_variant": any(max(v["batch64"]["agreement"], v["batch1"]["agreement"]) >= ex.INT8_AGREEMENT_TARGET
                                         for v in variants.values()),
    }
    meeting = [n for n, v in variants.items()
               if min(v["batch64"]["agreement"], v["batch1"]["agreement"]) >= ex.INT8_AGREEMENT_TARGET]
    summary["variants_meeting_agreement_target"] = meeting
    if speed:
        summary["speedup_b1_of_variants_meeting_agreement_target"] = {n: speed[n]["speedup_b1"] for n in meeting}
        summary["speedup_b64_of_variants_meeting_agreement_target"] = {n: speed[n]["speedup_b64"] for n in meeting}
    if leave_one_out:
        node = min(leave_one_out, key=lambda n: leave_one_out[n]["disagreements_b64"])
        summary.update(leave_one_out_fewest_flips=leave_one_out[node]["disagreements_b64"], leave_one_out_node=node)
    result = {**bench_env.provenance(), "export_dir": os.path.relpath(os.path.abspath(args.export_dir), ROOT),
              "eval_source": source, "summary": summary, "variants": variants, "smoothing": smoothing,
              "leave_one_out": leave_one_out,
              "speed": speed, "seconds": time.perf_counter() - start}
    bench_env.write_results(args.results_dir, "int8_variants", result, table(result))
    return 0


def smooth(src: str, dst: str, calibration, alpha: float) -> dict:
    """Move activation range into the weights, per input channel, before dynamic quantisation (SmoothQuant's idea).

    For each activation X feeding weight MatMuls X @ W (Q, K and V share one X): s_j = max|X_j|^alpha /
    max|W_j.|^(1 - alpha) over the calibration batches, then X @ W = (X / s) @ (s W). X / s is an explicit Mul node (a
    LayerNorm's output could absorb it, a GELU's cannot; one node is simpler to check). The fp32 model is unchanged up
    to rounding. Returns, per activation, the largest channel range over the median one: how outlier-heavy it is.
    """
    import collections
    import copy

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(src)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    groups = collections.defaultdict(list)
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            groups[node.input[0]].append(node)
    probe = copy.deepcopy(model)
    for name in groups:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    ranges: dict[str, np.ndarray] = {}
    while (feed := calibration.get_next()) is not None:
        mask = feed["attention_mask"].astype(bool)
        for name, value in zip(outputs, session.run(None, feed)):
            if name in groups:  # padding positions are not real activations
                top = np.abs(value[mask]).max(axis=0)
                ranges[name] = np.maximum(ranges[name], top) if name in ranges else top
    stats = {}
    for name, nodes in groups.items():
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]  # [in, out]
        w_range = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        scale = np.clip(ranges[name] ** alpha / np.maximum(w_range, 1e-8) ** (1 - alpha), 1e-5, None).astype(np.float32)
        stats[name] = float(ranges[name].max() / np.median(ranges[name]))
        inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{name}_smooth_inverse")
        graph.initializer.append(inverse)
        graph.node.insert(list(graph.node).index(nodes[0]),
                          helper.make_node("Mul", [name, inverse.name], [f"{name}_smoothed"], name=f"{name}_smooth"))
        for node, w in zip(nodes, weights):
            inits[node.input[1]].CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(np.float32), node.input[1]))
            node.input[0] = f"{name}_smoothed"
    onnx.save(model, dst)
    return {"alpha": alpha, "largest_over_median_channel_range": stats}


def table(result: dict) -> str:
    s, rows = result["summary"], result["summary"]["rows"]
    lines = [
        "# int8 against fp32: where they disagree, and the quantisation settings tried",
        "",
        f"- **Date**: {result['date']}. **Machine**: {result['machine']['cpu']}, {result['machine']['cores']} cores; "
        f"torch threads {result['threads']['torch_num_threads']} (ONNX Runtime gets the same).",
        bench_env.versions_line(result),
        f"- **Command**: `{result['command']}`, on `{result['export_dir']}/model.onnx`, scored on {rows} rows of "
        f"`{result['eval_source']}`.",
        f"- fp32 itself is within 0.05 of a tie (top-1 minus top-2 probability) on {s['fp32_rows_within_0.05_of_a_tie']} "
        f"rows and within 0.10 on {s['fp32_rows_within_0.10_of_a_tie']}; the target (99.5% agreement) allows "
        f"{int(rows * (1 - s['agreement_target']))} flips.",
        "",
        "| variant | flips b64 | agreement b64 | largest fp32 margin flipped | rows that close | flips b1 | "
        "accuracy change (points) | max / mean abs logit diff | size (MB) |" + (" speed-up b1 / b64 |" if result["speed"] else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if result["speed"] else ""),
    ]
    for name, v in result["variants"].items():
        a, b = v["batch64"], v["batch1"]
        line = (f"| {name}: {v['what']} | {a['disagreements']} | {100 * a['agreement']:.2f}% | {a['largest_margin']:.3f} | "
                f"{a['rows_within']} | {b['disagreements']} | {a['accuracy_change_points']:+.2f} | "
                f"{a['max_abs_logit_diff']:.3f} / {a['mean_abs_logit_diff']:.3f} | {v['size_mb']:.1f} |")
        if result["speed"]:
            sp = result["speed"][name]
            line += f" {sp['speedup_b1']:.2f}x / {sp['speedup_b64']:.2f}x |"
        lines.append(line)
    for name, sm in result.get("smoothing", {}).items():
        ratios = sm["largest_over_median_channel_range"]
        lines += ["", f"{name}: activation outliers, largest channel range over the median channel's, per weight-MatMul "
                  f"input: " + ", ".join(f"{k} {v:.1f}" for k, v in ratios.items()) + "; the rewritten fp32 model "
                  f"differs from the original by at most {sm['fp32_max_abs_diff_after_rewrite']:.1e} in a logit."]
    if result["leave_one_out"]:
        lines += ["", "Default quantisation with one weight matrix left in fp32 (flips at batch 64, mean |logit diff|):", ""]
        lines += [f"- {n}: {v['disagreements_b64']}, {v['mean_abs_logit_diff_b64']:.4f}" for n, v in result["leave_one_out"].items()]
    lines += ["", f"Fewest flips: {s['fewest_flips_variant']} ({s['fewest_flips_b64']}); agreement target met at both "
              f"batch sizes by: {', '.join(s['variants_meeting_agreement_target']) or 'none'}."]
    if "speedup_b1_of_variants_meeting_agreement_target" in s:
        lines += ["Their speed against fp32: " + ", ".join(
            f"{n} {s['speedup_b1_of_variants_meeting_agreement_target'][n]:.2f}x at batch 1 and "
            f"{s['speedup_b64_of_variants_meeting_agreement_target'][n]:.2f}x at batch 64"
            for n in s["variants_meeting_agreement_target"]) + "."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
