"""Causal-LM distillation on tiny Shakespeare with real hub models, on a GPU (issue 17); not run in CI or on the CPU.

    python benchmarks/shakespeare_lm_hub.py [--teacher Qwen/Qwen2.5-1.5B] [--student Qwen/Qwen2.5-0.5B] [--steps 300]

The CPU benchmark trains its GPT-2s from scratch; this one does the same comparison with pretrained models, for when
a GPU and the Hugging Face hub are at hand. Data: `../shared/data/tinyshakespeare/input.txt`, nanoGPT's split
(`train_fraction: 0.9`: the first 90% of the characters train, the last 10% validate and test). The teacher is used
as it is (no fine-tuning: a 1.5B model already models this text well); its top-k logits are cached once, in a
soft-label cache every student shares, and each student is fine-tuned from its pretrained weights for the same steps:
hard labels (plain next-token fine-tuning), forward KL, reverse KL and JSD (beta 0.5), all through kdistill's Python
API (`make_config`, `distill`, `evaluate`), then scored on the held-out 10%.

Why Qwen2.5-1.5B -> Qwen2.5-0.5B: same-tokenizer distillation compares the two models' distributions token id by
token id, so the pair must share a tokenizer and an output layer of one width. Both have Qwen2.5's tokenizer and
151,936 lm_head rows; a Qwen2.5-0.5B teacher with a SmolLM-135M student (49,152 rows, another tokenizer) is refused
when the trainer is built, and Qwen2.5-7B's padded 152,064 rows would be too.

Writes benchmarks/results/shakespeare_lm_hub.json (a top-level `summary`) and .md. Refuses in one line, exit 2, with
no CUDA GPU or when the models are neither in the local hub cache nor reachable.

`--cpu` runs the same steps on the CPU, in float32, for checking this script where no GPU is lent, and writes
shakespeare_lm_hub_cpu.{json,md}, whose figures say nothing about the hub models. With `--tiny` it first makes, in
the work directory, a pair of Qwen2ForCausalLM (the Qwen2.5 models' class) to check it with: a 512-token BPE of the
train split, a 2 x 64 teacher taught one epoch by `teach`, a 1 x 64 student from a config (about a minute):

    OMP_NUM_THREADS=2 python benchmarks/shakespeare_lm_hub.py --cpu --tiny --steps 60 --block_size 128 \
        --batch_size 16 --learning_rate 3e-3
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DATA = os.path.join("..", "shared", "data", "tinyshakespeare", "input.txt")
# (name, strategy, soft_loss): the students, each from the same pretrained weights. A KD student first: a pair the
# trainer refuses (vocabularies of two widths) is refused before a hard student has trained for nothing.
STUDENTS = (("forward_kl", "soft", "forward_kl"), ("reverse_kl", "soft", "reverse_kl"), ("jsd", "soft", "jsd"),
            ("hard", "hard", "kl"))
PUBLISHED = ("MiniLLM and GKD report distilled students above plain fine-tuning (GPT-2 1.5B -> 120M on Dolly, "
             "ROUGE-L 23.2 SFT vs 24.6 MiniLLM: Gu et al. 2024)")


def refuse(message: str) -> int:
    print(f"shakespeare_lm_hub: error: {message}", file=sys.stderr)
    return 2


def reachable(name: str) -> bool:
    """Whether a hub model's config is in the local cache, or the hub answers for it."""
    from huggingface_hub import model_info, try_to_load_from_cache

    if os.path.isdir(name) or isinstance(try_to_load_from_cache(name, "config.json"), str):
        return True
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        model_info(name, timeout=10)
        return True
    except Exception:  # noqa: BLE001 - no network, no such model, a proxy: all mean "not to be had here"
        return False


def run_config(args, name: str, strategy: str, soft_loss: str):
    from kdistill import make_config

    return make_config({
        "task": "causal_lm", "train_file": args.data, "train_fraction": 0.9, "block_size": args.block_size,
        "max_length": args.block_size, "teacher_model": args.teacher, "teacher_train": False,
        "soft_label_top_k": args.top_k, "student_init": "from_pretrained", "student_model": args.student,
        "strategy": strategy, "soft_loss": soft_loss, "temperature": 1.0, "jsd_beta": 0.5,
        "output_dir": os.path.join(args.out, name), "soft_label_cache": os.path.join(args.out, "soft_labels"),
        "max_steps": args.steps, "learning_rate": args.learning_rate, "warmup_steps": args.steps // 10,
        "per_device_train_batch_size": args.batch_size, "per_device_eval_batch_size": args.batch_size,
        "bf16": not args.cpu, "logging_steps": 10, "save_strategy": "no", "speed_batches": args.speed_batches,
        "seed": args.seed, "overwrite": True, "report_to": "none",
    })


def teacher_scores(config) -> dict:
    """The teacher's own held-out loss and loss per character (its cache keeps only its top k, not its loss), one
    block at a time through the task's predict_items and metrics.causal_lm_metrics, so a [block, 151,936] row of
    logits is the most that sits in memory."""
    from kdistill import metrics
    from kdistill.lm_data import loss_per_character
    from kdistill.pipeline import load_teacher, prepare_split, task_of

    teacher, tokenizer = load_teacher(config, config.teacher.teacher_model, {})
    task = task_of(config)
    test = prepare_split(config, "test", tokenizer, {}, who="teacher tokenizer")
    rows, labels = task.item_rows(test, tokenizer), task.item_labels(test)
    nll = tokens = 0.0
    for row, y in zip(rows, labels):
        (logits,) = task.predict_items(teacher, [row], tokenizer, batch_size=1)
        scored = metrics.causal_lm_metrics([logits], [y])
        nll, tokens = nll + scored["loss"] * scored["tokens"], tokens + scored["tokens"]
    return {"loss": nll / tokens, "tokens": int(tokens),
            "loss_per_character": loss_per_character(nll / tokens, int(tokens), labels.characters)}


def tiny_pair(args) -> tuple[str, str]:
    """`--tiny`: (teacher, student) directories of two small Qwen2ForCausalLM sharing a BPE of the train split, made
    under the work directory unless they are there; the teacher taught one epoch."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from kdistill import make_config, teach
    from kdistill.lm_data import split_text, train_bpe_tokenizer
    from kdistill.pipeline import paths

    root = os.path.join(args.out, "tiny")
    init, student = os.path.join(root, "teacher_init"), os.path.join(root, "student")
    config = make_config({
        "task": "causal_lm", "train_file": args.data, "train_fraction": 0.9, "block_size": args.block_size,
        "max_length": args.block_size, "teacher_model": init, "teacher_train": True, "teacher_epochs": 1.0,
        "teacher_learning_rate": 3e-3, "teacher_batch_size": 16, "strategy": "hard", "student_init": "from_pretrained",
        "student_model": student, "output_dir": os.path.join(root, "teach"), "seed": 0, "save_strategy": "no",
        "report_to": "none", "overwrite": True})
    taught = paths(config).teacher
    if os.path.isfile(os.path.join(taught, "config.json")):
        return taught, student
    with open(args.data, encoding="utf-8") as fh:
        tok = train_bpe_tokenizer(split_text(fh.read(), 0.9)[0].splitlines(keepends=True), 512, init)
    for layers, path in ((2, init), (1, student)):
        torch.manual_seed(0)
        Qwen2ForCausalLM(Qwen2Config(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=args.block_size, tie_word_embeddings=True,
            bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )).save_pretrained(path)
        tok.save_pretrained(path)
    teach(config)
    return taught, student


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="Qwen/Qwen2.5-1.5B")
    parser.add_argument("--student", default="Qwen/Qwen2.5-0.5B")
    parser.add_argument("--data", default=DATA, help="tiny Shakespeare's input.txt (relative to the project root)")
    parser.add_argument("--block_size", type=int, default=512)
    parser.add_argument("--top_k", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per student")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=2e-5)
    parser.add_argument("--speed_batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="work directory (default runs/bench/shakespeare_lm_hub[_cpu])")
    parser.add_argument("--cpu", action="store_true",
                        help="run on the CPU in float32: a check of this script with small local models")
    parser.add_argument("--tiny", action="store_true",
                        help="with --cpu: make and use two small Qwen2 models (see the docstring) as the pair")
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    os.chdir(ROOT)
    results_name = "shakespeare_lm_hub_cpu" if args.cpu else "shakespeare_lm_hub"
    args.out = args.out or os.path.join(ROOT, "runs", "bench", results_name)

    import torch

    if not args.cpu and not torch.cuda.is_available():
        return refuse("no CUDA GPU here; this benchmark runs hub models on a GPU (the CPU one trains GPT-2s from "
                      "scratch)")
    if args.tiny and not args.cpu:
        return refuse("--tiny makes two small models to check this script on the CPU; use it with --cpu")
    if not os.path.isfile(args.data):
        return refuse(f"{args.data}: no such file (run from the project root, with ../shared/data beside it)")
    if args.tiny:
        args.teacher, args.student = tiny_pair(args)
    missing = [name for name in (args.teacher, args.student) if not reachable(name)]
    if missing:
        return refuse(f"{', '.join(missing)}: not in the local hub cache and the hub cannot be reached; download "
                      "them first (huggingface-cli download NAME) or run where the network is")

    import bench_env
    from kdistill import distill, evaluate
    from kdistill.errors import UserError
    from kdistill.stats import gap_closed

    start = time.perf_counter()
    result = {**bench_env.provenance(), "gpu": None if args.cpu else torch.cuda.get_device_name(0),
              "teacher_model": args.teacher, "student_model": args.student, "settings": vars(args), "published": PUBLISHED, "students": {}}
    try:
        for name, strategy, soft_loss in STUDENTS:
            config = run_config(args, name, strategy, soft_loss)
            t0 = time.perf_counter()
            trained = distill(config)
            scores = evaluate(config)
            result["students"][name] = {"train_seconds": time.perf_counter() - t0, "distill": trained, "eval": scores}
            print(f"{name}: validation loss {scores['student']['loss']:.4f}", flush=True)
    except UserError as err:
        return refuse(str(err))
    first = result["students"]["hard"]["eval"]
    teacher = first["teacher"]
    hard = first["student"]["loss"]
    kd = {n: r["eval"]["student"]["loss"] for n, r in result["students"].items() if n != "hard"}
    best = min(kd, key=kd.get)
    result["teacher_scores"] = teacher_scores(run_config(args, "hard", "hard", "kl"))
    teacher_loss = result["teacher_scores"]["loss"]
    # None where the teacher is no better than the hard student: there is no gap to close
    gap = None if teacher_loss is None else gap_closed([hard], [kd[best]], teacher_loss)["share"]
    result["summary"] = {
        "hard_validation_loss": hard, "best_kd": best, "best_kd_validation_loss": kd[best],
        "kd_validation_loss": kd, "teacher_validation_loss": teacher_loss, "gap_closed": gap,
        "teacher_loss_per_character": result["teacher_scores"]["loss_per_character"],
        "loss_per_character": {n: r["eval"]["student"].get("loss_per_character")
                               for n, r in result["students"].items()},
        "agreement": {n: r["eval"]["student"].get("agreement") for n, r in result["students"].items()},
        "cache_bytes_per_token": (result["students"][best]["distill"].get("soft_label_cache") or {}).get(
            "bytes_per_token"),
        "teacher_generation_tokens_per_s_b1": teacher.get("generation_tokens_per_s_b1"),
        "student_generation_tokens_per_s_b1": first["student"].get("generation_tokens_per_s_b1"),
    }
    result["load_end"], result["seconds"] = bench_env.load1(), time.perf_counter() - start
    where = f"GPU: {result['gpu']}" if result["gpu"] else "CPU, float32: a check of the script, not a result"
    lines = [f"# Tiny Shakespeare, {args.teacher} -> {args.student} ({where})", "",
             f"- **Date**: {result['date']}. **Command**: `{result['command']}`.", bench_env.versions_line(result), "",
             "| student | validation loss | loss/char | agreement | generation tok/s (b1) |", "|---|---|---|---|---|"]
    for name, r in result["students"].items():
        s = r["eval"]["student"]
        lines.append(f"| {name} | {s['loss']:.4f} | {s.get('loss_per_character', float('nan')):.4f} | "
                     f"{s.get('agreement', float('nan')):.3f} | {s.get('generation_tokens_per_s_b1', float('nan')):.0f} |")
    lines += ["", f"Best KD: {best}; gap closed: {gap if gap is None else f'{100 * gap:.1f}%'}. {PUBLISHED}.", ""]
    bench_env.write_results(args.results_dir, results_name, result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
