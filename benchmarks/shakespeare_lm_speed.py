"""Issue 17's two speed targets, each a ratio measured in one run, on the models shakespeare_lm.py trained.

    OMP_NUM_THREADS=2 python benchmarks/shakespeare_lm_speed.py --profile quick --work runs/bench/shakespeare_quick/work

Reads a finished (or at least teacher-trained and cached) `shakespeare_lm.py` work directory: its teacher, its
tokenizer's init and its top-k / full caches. Nothing here trains a model to use; the students it trains are only
timed.

1. The soft-label pass against bare teacher inference: per repeat, interleaved, (a) the bare teacher over the train
   split's blocks at the eval batch size, logits dropped; (b) the same loop with the top-64 reduction timed apart,
   both the route the cache now takes (`topk_payload(..., overwrite=True)`: the k classes masked in place, one
   logsumexp) and the one it took before (`losses.lm.others_logsumexp`, whose exact masked route copies each row
   that keeps under 5% of its mass outside the top k); (c) the whole pass as a run makes it
   (`teacher_outputs`: load, tokenise and pack, forward, top-k, stream to disk, read back) into a fresh cache
   directory. Ratio = bare seconds / pass seconds (target >= 0.9).
2. A KD training step from the cache against a hard-label step: each setting trained for S1 and for S2 steps
   (same seed, data and order), per step = (train_seconds(S2) - train_seconds(S1)) / (S2 - S1), so the setup, the
   first step and the cache's opening cancel; settings interleaved, repeats in turn, the median taken (target
   <= 1.15x).
Results: benchmarks/results/shakespeare_lm_speed{,_quick,_smoke}{,_pass,_steps}.{json,md} (top-level `summary`; the
suffix names the one part timed with --parts).
"""

import argparse
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_env  # noqa: E402
from shakespeare_lm import PROFILES, base_values, cell_values, data_file, log  # noqa: E402

STEP_SETTINGS = ["hard", "forward_kl top-64", "forward_kl top-64 + CE", "forward_kl full", "reverse_kl top-64",
                 "jsd top-64"]


def init_of(work: str) -> dict:
    """What cell_values needs of shakespeare_lm's init, read from the work directory (not made again)."""
    from kdistill.students import load_tokenizer

    char_dir = os.path.join(work, "char_tokenizer")
    return {"dir": os.path.join(work, "teacher_init"), "char_dir": char_dir,
            "char_vocab": len(load_tokenizer(char_dir, "char tokenizer"))}


def pass_legs(base: dict, teacher_dir: str, work: str, repeats: int) -> dict:
    import torch

    from kdistill import make_config
    from kdistill.losses.lm import others_logsumexp
    from kdistill.pipeline import _loader, load_teacher, prepare_split, task_of, teacher_outputs
    from kdistill.soft_labels.writer import topk_payload

    top64 = {**base, "teacher_model": teacher_dir, "teacher_train": False, "strategy": "soft", "soft_label_top_k": 64}
    config = make_config({**top64, "output_dir": os.path.join(work, "speed", "probe")})
    teacher, tok = load_teacher(config, teacher_dir, {})
    teacher.eval()
    rows = task_of(config).model_rows(prepare_split(config, "train", tok, {}), tok)
    tokens, batch = sum(len(r["input_ids"]) for r in rows), config.distill.per_device_eval_batch_size
    batches = [torch.tensor([r["input_ids"] for r in rows[i : i + batch]]) for i in range(0, len(rows), batch)]
    legs: dict[str, list[float]] = {k: [] for k in ("bare", "forward", "tail_before", "tail_now", "pass")}
    exact_share = 0.0
    for r in range(repeats):
        with torch.inference_mode():
            start = time.perf_counter()
            for ids in batches:
                teacher(input_ids=ids)
            legs["bare"].append(time.perf_counter() - start)
            fwd = before = now = 0.0
            exact = items = 0
            for ids in batches:
                t0 = time.perf_counter()
                logits = teacher(input_ids=ids).logits.float()
                t1 = time.perf_counter()
                values, indices = torch.topk(logits, 64, dim=-1)
                total = torch.logsumexp(logits, dim=-1, keepdim=True)
                others_logsumexp(logits, indices, values, total)
                t2 = time.perf_counter()
                _, _, tail = topk_payload(logits, 64, overwrite=True)
                t3 = time.perf_counter()
                fwd, before, now = fwd + t1 - t0, before + t2 - t1, now + t3 - t2
                exact, items = exact + int((tail.exp() < 0.05).sum()), items + tail.numel()
            legs["forward"].append(fwd)
            legs["tail_before"].append(before)
            legs["tail_now"].append(now)
            exact_share = exact / items
        cache = os.path.join(work, "speed", f"pass_cache_{r}")
        shutil.rmtree(cache, ignore_errors=True)
        run = make_config({**top64, "soft_label_cache": cache, "output_dir": os.path.join(work, "speed", "pass_run")})
        start = time.perf_counter()
        teacher_outputs(run, ("train",), loader=_loader(run))
        legs["pass"].append(time.perf_counter() - start)
        shutil.rmtree(cache, ignore_errors=True)
        log(f"pass repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in legs.items()))
    med = {k: statistics.median(v) for k, v in legs.items()}
    return {"tokens": tokens, "blocks": len(rows), "batch_size": batch, "repeats": repeats, "seconds": legs,
            "median_seconds": med, "ratio": med["bare"] / med["pass"],
            "ratios": [b / p for b, p in zip(legs["bare"], legs["pass"])],
            "kernel_ratio_now": med["forward"] / (med["forward"] + med["tail_now"]),
            "kernel_ratio_before": med["forward"] / (med["forward"] + med["tail_before"]),
            "tail_speedup": med["tail_before"] / med["tail_now"],
            "share_of_items_under_5pct_tail": exact_share, "threads": torch.get_num_threads()}


def step_legs(base: dict, teacher_dir: str, work: str, init: dict, steps: tuple[int, int], repeats: int) -> dict:
    from kdistill import distill, make_config

    seconds: dict[str, dict[int, list[float]]] = {s: {n: [] for n in steps} for s in STEP_SETTINGS}
    for r in range(repeats):
        for setting in STEP_SETTINGS:
            for n in steps:
                values = cell_values({**{k: v for k, v in base.items() if k != "num_train_epochs"}, "max_steps": n,
                                      "logging_steps": n}, teacher_dir, work, init, setting, 1)
                values["output_dir"] = os.path.join(work, "speed", "steps", setting.replace(" ", "_"), str(n))
                seconds[setting][n].append(distill(make_config(values))["train_seconds"])
            s = seconds[setting]
            log(f"steps repeat {r + 1} {setting}: {steps[0]} steps {s[steps[0]][-1]:.1f} s, {steps[1]} steps "
                f"{s[steps[1]][-1]:.1f} s")
    per_step = {s: [(b - a) / (steps[1] - steps[0]) for a, b in zip(v[steps[0]], v[steps[1]])]
                for s, v in seconds.items()}
    med = {s: statistics.median(v) for s, v in per_step.items()}
    return {"steps": list(steps), "repeats": repeats, "train_seconds": seconds, "per_step_seconds": per_step,
            "median_per_step": med, "over_hard": {s: med[s] / med["hard"] for s in med}}


def render(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Causal-LM speed (`shakespeare_lm_speed.py`, {result['profile']} profile)", "",
             f"- **Date**: {result['date']}. **Machine**: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['cores']} "
             f"cores, Python {m['python']}.", bench_env.versions_line(result),
             f"- **Command**: `{result['command']}`. **Duration**: {result['seconds'] / 60:.1f} min; load "
             f"{result['load_start']} at the start, {result['load_end']} at the end.", ""]
    if "pass" in result:
        p = result["pass"]
        lines += [f"Cache pass over the train split ({p['blocks']} blocks, {p['tokens']:,} tokens, batch "
                  f"{p['batch_size']}, {p['threads']} threads), median of {p['repeats']} interleaved repeats:", "",
                  "| leg | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in p["median_seconds"].items()]
        lines += ["", f"Pass over bare: **{p['ratio']:.3f}x** (per repeat {', '.join(f'{x:.3f}' for x in p['ratios'])}"
                  f"); forward over forward + top-k now {p['kernel_ratio_now']:.3f}x, with the earlier tail route "
                  f"{p['kernel_ratio_before']:.3f}x (tail {p['tail_speedup']:.2f}x faster now; "
                  f"{100 * p['share_of_items_under_5pct_tail']:.0f}% of the tokens keep under 5% of the mass outside "
                  "the top 64).", ""]
    if "steps" in result:
        s = result["steps"]
        lines += [f"Training step by differencing {s['steps'][0]} and {s['steps'][1]} steps, median of "
                  f"{s['repeats']}:", "", "| setting | s / step | over hard |", "|---|---|---|"]
        lines += [f"| {k} | {v:.3f} | {s['over_hard'][k]:.2f} |" for k, v in s["median_per_step"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="a shakespeare_lm.py work directory (teacher and caches made)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full", help="the work directory's profile")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs=2, default=(4, 16))
    parser.add_argument("--parts", nargs="+", choices=("pass", "steps"), default=["pass", "steps"],
                        help="what to time (a page of one part says so)")
    parser.add_argument("--results_dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    profile = args.profile
    prof, work = PROFILES[profile], os.path.abspath(args.work)
    teacher_dir = os.path.join(work, "teacher_run", "teacher")
    if not os.path.isfile(os.path.join(teacher_dir, "teach_results.json")):
        raise SystemExit(f"{teacher_dir}: no trained teacher; run benchmarks/shakespeare_lm.py with --work {args.work}")
    base = base_values(prof, data_file(prof, work), work)
    started = time.perf_counter()
    result = {**bench_env.provenance(), "profile": profile, "work": work}
    result["summary"] = {}
    if "pass" in args.parts:
        result["pass"] = pass_legs(base, teacher_dir, work, args.repeats)
        result["summary"].update(cache_pass_over_bare=result["pass"]["ratio"],
                                 cache_pass_target_met=result["pass"]["ratio"] >= 0.9)
    if "steps" in args.parts:
        result["steps"] = step_legs(base, teacher_dir, work, init_of(work), tuple(args.steps), args.repeats)
        over = result["steps"]["over_hard"]
        worst = max((v, k) for k, v in over.items() if k != "hard")
        result["summary"].update(kd_step_over_hard=over, worst_kd_step={"setting": worst[1], "over_hard": worst[0]},
                                 kd_step_target_met={k: v <= 1.15 for k, v in over.items() if k != "hard"})
    result.update(seconds=time.perf_counter() - started, load_end=bench_env.load1())
    name = "shakespeare_lm_speed" + ("" if profile == "full" else f"_{profile}")
    if len(args.parts) == 1:
        name += f"_{args.parts[0]}"
    bench_env.write_results(args.results_dir, name, result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
