"""Peak memory of the soft-label pass over a transfer set of 10k, 100k and 1M rows, streaming against whole-split.

    python benchmarks/softlabel_memory.py                      # 10k, 100k, 1M rows; both modes
    python benchmarks/softlabel_memory.py --rows 10000 100000  # fewer sizes
    python benchmarks/softlabel_memory.py --rows 1000 --modes streaming whole --results_dir /tmp/x  # a smoke run

Each measurement is a fresh child process (peak RSS, `ru_maxrss`, cannot be reset inside one) that loads a tiny
teacher (a 2-layer, 32-wide BERT with a word-level vocabulary trained on SST-2) and labels an unlabelled transfer
file of N SST-2 sentences (cycled):

- streaming: `soft_labels.produce.teacher_pass`, what `kdistill` runs: SOFT_LABEL_CHUNK_ROWS rows tokenised and
  labelled at a time;
- whole: the pass as it was before it streamed: the whole split tokenised into a Dataset, turned into a list of
  rows, then labelled (`pipeline.prepare_split`, then the task's `model_rows` and `pad_inputs`).

"before" is the child's peak RSS once torch, the teacher and the memory-mapped transfer table are loaded; "peak"
is after the pass; the pass costs about peak - before. Writes softlabel_memory.json in --results_dir (default
benchmarks/results); prints a table. One run per cell on a shared machine: the times are rough, the memory figures
are not.

The cache mode (`--modes cache`; the other modes' numbers already in the JSON are kept) writes and then reads a
soft-label cache (soft_labels.CacheWriter / read_cache), each case in a fresh child process, its file under /tmp
(deleted after):

- topk64_5M_tokens: 5,000,000 tokens in rows of 16-240 tokens, top-64 fp16 logits of a 32,000-class vocabulary
  (random top-k values, indices and tails handed to `add_topk`, as a big-vocabulary teacher pass will), about
  1.3 GB (uint16 indices; 1.85 GB with int32); one epoch of `gather_topk` over all rows in random batches of 32;
- dense_1M_rows_4_classes: 1,000,000 rows of 4 float32 logits; one epoch of `gather` in random batches of 32, then
  the same batches timed against indexing the logits held in memory (what the collator did before v2);
- topk64_5M_tokens_keep_pages (with --keep_pages): the first case with the reader never releasing its mapped pages,
  to show what the resident set would be without that.

Recorded: the child's peak RSS (ru_maxrss, which counts the mapped file's pages it touched) after the epoch, its RSS
at the end, write, verify-and-open and epoch times and the file size. Target: each peak under 1024 MiB.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SST2 = os.path.join(os.path.dirname(ROOT), "shared", "data", "sst2", "train.tsv")
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
MODES = ("streaming", "whole", "cache")
CACHE_CASES = ("topk64_5M_tokens", "dense_1M_rows_4_classes")
TARGET_MIB = 1024


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def sentences() -> list[str]:
    with open(SST2, encoding="utf-8") as fh:
        next(fh)
        return [line.split("\t")[0] for line in fh]


def make_teacher(work: str) -> str:
    """A tiny BERT classifier and its word-level tokenizer, saved in work/teacher."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    path = os.path.join(work, "teacher")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(sentences()[:3000], trainers.WordLevelTrainer(
        vocab_size=2000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_max_length=128)
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=130, num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def make_transfer(work: str, rows: int) -> str:
    path = os.path.join(work, f"transfer_{rows}.tsv")
    if not os.path.exists(path):
        pool = sentences()
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("sentence\n")
            for i in range(rows):
                fh.write(pool[i % len(pool)] + "\n")
    return path


def child(mode: str, work: str, rows: int) -> None:
    """One measurement; prints a JSON line."""
    import torch

    from kdistill import pipeline
    from kdistill.config import make_config
    from kdistill.data import load_split
    from kdistill.soft_labels import predict_logits
    from kdistill.soft_labels.produce import teacher_pass
    from kdistill.students import load_classifier, load_tokenizer
    from kdistill.tasks import get_task

    torch.set_num_threads(1)
    config = make_config(
        train_file=SST2, transfer_file=make_transfer(work, rows), text_column="sentence", max_length=64,
        teacher_model=os.path.join(work, "teacher"), teacher_train=False, output_dir=os.path.join(work, "run"),
        per_device_eval_batch_size=256, use_cpu=True,
    )
    label2id = pipeline.label_map(config)
    teacher = load_classifier(config.teacher.teacher_model, "teacher", label2id)
    tokenizer = load_tokenizer(config.teacher.teacher_model, "teacher tokenizer")
    task = get_task(config.data.task)
    table = load_split(config.data, "transfer")  # the Arrow cache, made once per file, memory-mapped
    before = peak_mb()
    start = time.perf_counter()
    if mode == "streaming":
        logits = teacher_pass(config, "transfer", teacher, tokenizer, progress=False)
    else:
        encoded = pipeline.prepare_split(config, "transfer", tokenizer, label2id, who="teacher tokenizer")
        logits = predict_logits(teacher, task.model_rows(encoded, tokenizer), task.pad_inputs(tokenizer),
                                batch_size=config.distill.per_device_eval_batch_size)
    seconds = time.perf_counter() - start
    assert logits.shape == (len(table), 2)
    print(json.dumps({"mode": mode, "rows": rows, "before_mb": round(before, 1), "peak_mb": round(peak_mb(), 1),
                      "pass_mb": round(peak_mb() - before, 1), "seconds": round(seconds, 1),
                      "logits_mb": round(logits.numel() * 4 / 2**20, 1)}))


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_topk(path: str, tokens: int, k: int, vocabulary: int) -> tuple[int, int]:
    """Random top-k outputs for `tokens` tokens in rows of 16-240, streamed ~100k tokens per add_topk."""
    import numpy as np
    import torch

    from kdistill.soft_labels import CacheWriter

    rng, g = np.random.default_rng(0), torch.Generator().manual_seed(0)
    lengths = rng.integers(16, 241, size=tokens // 16 + 1)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), tokens)) + 1]
    lengths[-1] -= int(lengths.sum()) - tokens
    # Distinct classes per token: base + j * stride (mod V) with a stride coprime to V (32,000 = 2^8 5^3).
    strides = torch.tensor([s for s in range(1, vocabulary, 2) if s % 5])
    with CacheWriter(path, "f" * 64, payload="topk", top_k=k, value_dtype="float16", classes=vocabulary) as writer:
        ends = np.cumsum(lengths)
        for chunk in np.split(lengths, np.searchsorted(ends, np.arange(100_000, tokens, 100_000))):
            n, split = int(chunk.sum()), chunk.tolist()
            values = torch.randn(n, k, generator=g).sort(dim=1, descending=True).values * 2
            base = torch.randint(0, vocabulary, (n, 1), generator=g)
            stride = strides[torch.randint(0, len(strides), (n, 1), generator=g)]
            indices = (base + torch.arange(k) * stride) % vocabulary
            tail = torch.rand(n, generator=g).clamp_min(1e-6).log()
            writer.add_topk(values.split(split), indices.split(split), tail.split(split))
    return len(lengths), tokens


def cache_child(case: str) -> None:
    """Write then read one cache (see the module docstring); prints a JSON line."""
    import torch

    from kdistill.soft_labels import CacheWriter, read_cache
    from kdistill.soft_labels.cache import RESIDENT_LIMIT

    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="softlabel_cache-", dir="/tmp")
    path = os.path.join(work, "train.safetensors")
    out: dict = {"case": case, "before_mib": round(peak_mb(), 1)}
    try:
        start = time.perf_counter()
        if case.startswith("topk64_5M_tokens"):
            rows, items = write_topk(path, 5_000_000, 64, 32_000)
        else:
            rows = items = 1_000_000
            g = torch.Generator().manual_seed(0)
            with CacheWriter(path, "f" * 64) as writer:
                for _ in range(0, rows, 100_000):
                    writer.add(torch.randn(100_000, 4, generator=g) * 3)
        out.update(write_s=round(time.perf_counter() - start, 1), file_mib=round(os.path.getsize(path) / 2**20, 1),
                   rows=rows, items=items, after_write_peak_mib=round(peak_mb(), 1))
        start = time.perf_counter()
        labels = read_cache(path, "f" * 64, resident_limit=1 << 62 if case.endswith("keep_pages") else RESIDENT_LIMIT)
        out["verify_open_s"] = round(time.perf_counter() - start, 1)
        batches = torch.randperm(rows, generator=torch.Generator().manual_seed(1)).split(32)
        start, seen = time.perf_counter(), 0
        for batch in batches:
            if labels.payload == "topk":
                seen += sum(len(v) for v in labels.gather_topk(batch)[0])
            else:
                seen += len(labels.gather(batch))
        out.update(epoch_s=round(time.perf_counter() - start, 1), batches=len(batches),
                   peak_mib=round(peak_mb(), 1), rss_end_mib=round(rss_mb(), 1))
        assert seen == items, (seen, items)
        if labels.payload == "dense":
            out["gather_us_per_batch"] = time_gather(labels, batches)
    finally:
        shutil.rmtree(work)
    print(json.dumps(out))


def time_gather(labels, batches) -> dict:
    """Per batch of 32 rows: SoftLabels.gather against the same rows indexed in an in-memory tensor (median of 5
    interleaved rounds over all batches, microseconds). Taken after the peak was recorded: the copy adds 15 MiB."""
    import statistics

    held = labels.dense()
    ways = {"cache.gather(idx)": labels.gather, "cache[idx]": labels.__getitem__,
            "in_memory[idx]": held.__getitem__, "in_memory.index_select(0, idx)": lambda b: held.index_select(0, b)}
    rounds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(5):
        for name, way in ways.items():
            start = time.perf_counter()
            for batch in batches:
                way(batch)
            rounds[name].append((time.perf_counter() - start) / len(batches) * 1e6)
    return {name: round(statistics.median(r), 2) for name, r in rounds.items()}


def run_cache_cases(cases: list[str], env: dict) -> list[dict]:
    print(f"{'cache case':>28} {'file MiB':>9} {'write s':>8} {'open s':>7} {'epoch s':>8} {'peak MiB':>9} "
          f"{'RSS end':>8}")
    measurements = []
    for case in cases:
        proc = subprocess.run([sys.executable, __file__, "--cache_child", case], capture_output=True, text=True,
                              env=env, check=True)
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        measurements.append(m)
        print(f"{case:>28} {m['file_mib']:>9.0f} {m['write_s']:>8.1f} {m['verify_open_s']:>7.1f} {m['epoch_s']:>8.1f} "
              f"{m['peak_mib']:>9.0f} {m['rss_end_mib']:>8.0f}", flush=True)
        for name, us in m.get("gather_us_per_batch", {}).items():
            print(f"{'':>28} {name}: {us:.2f} us per batch of 32")
    return measurements


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--work_dir", help="keeps the teacher and transfer files (default: a temporary directory)")
    parser.add_argument("--keep_pages", action="store_true", help="cache mode: also read without releasing pages")
    parser.add_argument("--results_dir", default=RESULTS_DIR,
                        help="where softlabel_memory.json goes (default benchmarks/results; a trial run: elsewhere)")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "WORK", "ROWS"), help=argparse.SUPPRESS)
    parser.add_argument("--cache_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    if args.cache_child:
        cache_child(args.cache_child)
        return 0

    # What this run does not measure again stays as the last run left it.
    results = os.path.join(args.results_dir, "softlabel_memory.json")
    result = {}
    if os.path.exists(results):
        with open(results, encoding="utf-8") as fh:
            result = json.load(fh)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}"
    command = "python benchmarks/softlabel_memory.py " + " ".join(sys.argv[1:])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "KDISTILL_LOG": "WARNING"}
    pass_modes = [m for m in args.modes if m != "cache"]
    if pass_modes:
        work = args.work_dir or tempfile.mkdtemp(prefix="softlabel_memory-")
        os.makedirs(work, exist_ok=True)
        make_teacher(work)
        env["HF_DATASETS_CACHE"] = os.path.join(work, "hf_datasets")
        measurements = []
        print(f"{'rows':>10} {'mode':>10} {'before MB':>10} {'peak MB':>9} {'pass MB':>8} {'seconds':>8}")
        for rows in args.rows:
            make_transfer(work, rows)
            for mode in pass_modes:
                proc = subprocess.run([sys.executable, __file__, "--child", mode, work, str(rows)],
                                      capture_output=True, text=True, env=env, check=True)
                m = json.loads(proc.stdout.strip().splitlines()[-1])
                measurements.append(m)
                print(f"{rows:>10,} {mode:>10} {m['before_mb']:>10.0f} {m['peak_mb']:>9.0f} {m['pass_mb']:>8.0f} "
                      f"{m['seconds']:>8.1f}", flush=True)

        from kdistill.soft_labels.produce import SOFT_LABEL_CHUNK_ROWS

        result.update({
            "date": datetime.date.today().isoformat(), "machine": machine, "command": command,
            "teacher": "BERT, 2 layers, hidden 32, word-level vocabulary of 2,000; max_length 64; eval batch 256",
            "chunk_rows": SOFT_LABEL_CHUNK_ROWS,
            "measurements": measurements,
        })
    if "cache" in args.modes:
        cases = [*CACHE_CASES, *(["topk64_5M_tokens_keep_pages"] if args.keep_pages else [])]
        cache = run_cache_cases(cases, env)
        peaks = {m["case"]: m["peak_mib"] for m in cache if m["case"] in CACHE_CASES}
        result["cache_read"] = {"date": datetime.date.today().isoformat(), "machine": machine, "command": command,
                                "target_mib": TARGET_MIB, "measurements": cache}
        result["summary"] = {
            **result.get("summary", {}),
            "cache_read_peak_mib": peaks,
            "cache_read_under_target": all(p < TARGET_MIB for p in peaks.values()),
            "cache_gather_us_per_batch_of_32": next(
                (m["gather_us_per_batch"] for m in cache if "gather_us_per_batch" in m), None),
        }

    os.makedirs(args.results_dir, exist_ok=True)
    with open(results, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    print(f"written: {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
