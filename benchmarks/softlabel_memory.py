"""Peak memory of the soft-label pass over a transfer set of 10k, 100k and 1M rows, streaming against whole-split.

    python benchmarks/softlabel_memory.py                      # 10k, 100k, 1M rows; both modes
    python benchmarks/softlabel_memory.py --rows 10000 100000  # fewer sizes

Each measurement is a fresh child process (peak RSS, `ru_maxrss`, cannot be reset inside one) that loads a tiny
teacher (a 2-layer, 32-wide BERT with a word-level vocabulary trained on SST-2) and labels an unlabelled transfer
file of N SST-2 sentences (cycled):

- streaming: `pipeline._teacher_pass`, what `kdistill` runs: SOFT_LABEL_CHUNK_ROWS rows tokenised and labelled at
  a time;
- whole: the pass as it was before it streamed: the whole split tokenised into a Dataset, turned into a list of
  rows, then labelled.

"before" is the child's peak RSS once torch, the teacher and the memory-mapped transfer table are loaded; "peak"
is after the pass; the pass costs about peak - before. Writes benchmarks/results/softlabel_memory.json; prints a
table. One run per cell on a shared machine: the times are rough, the memory figures are not.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SST2 = os.path.join(os.path.dirname(ROOT), "shared", "data", "sst2", "train.tsv")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "softlabel_memory.json")
MODES = ("streaming", "whole")


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
    from kdistill.students import load_classifier, load_tokenizer

    torch.set_num_threads(1)
    config = make_config(
        train_file=SST2, transfer_file=make_transfer(work, rows), text_column="sentence", max_length=64,
        teacher_model=os.path.join(work, "teacher"), teacher_train=False, output_dir=os.path.join(work, "run"),
        per_device_eval_batch_size=256, use_cpu=True,
    )
    label2id = pipeline.label_map(config)
    teacher = load_classifier(config.teacher.teacher_model, "teacher", label2id)
    tokenizer = load_tokenizer(config.teacher.teacher_model, "teacher tokenizer")
    table = pipeline.load_split(config.data, "transfer")  # the Arrow cache, made once per file, memory-mapped
    before = peak_mb()
    start = time.perf_counter()
    if mode == "streaming":
        logits = pipeline._teacher_pass(config, "transfer", teacher, tokenizer, progress=False)
    else:
        encoded = pipeline._tokenized_split(config, "transfer", tokenizer, label2id, who="teacher tokenizer")
        logits = pipeline.predict_logits(teacher, pipeline._model_rows(encoded, tokenizer), pipeline._pad(tokenizer),
                                         batch_size=config.distill.per_device_eval_batch_size)
    seconds = time.perf_counter() - start
    assert logits.shape == (len(table), 2)
    print(json.dumps({"mode": mode, "rows": rows, "before_mb": round(before, 1), "peak_mb": round(peak_mb(), 1),
                      "pass_mb": round(peak_mb() - before, 1), "seconds": round(seconds, 1),
                      "logits_mb": round(logits.numel() * 4 / 2**20, 1)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--work_dir", help="keeps the teacher and transfer files (default: a temporary directory)")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "WORK", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0

    work = args.work_dir or tempfile.mkdtemp(prefix="softlabel_memory-")
    os.makedirs(work, exist_ok=True)
    make_teacher(work)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": os.path.join(work, "hf_datasets"), "KDISTILL_LOG": "WARNING"}
    measurements = []
    print(f"{'rows':>10} {'mode':>10} {'before MB':>10} {'peak MB':>9} {'pass MB':>8} {'seconds':>8}")
    for rows in args.rows:
        make_transfer(work, rows)
        for mode in args.modes:
            proc = subprocess.run([sys.executable, __file__, "--child", mode, work, str(rows)],
                                  capture_output=True, text=True, env=env, check=True)
            m = json.loads(proc.stdout.strip().splitlines()[-1])
            measurements.append(m)
            print(f"{rows:>10,} {mode:>10} {m['before_mb']:>10.0f} {m['peak_mb']:>9.0f} {m['pass_mb']:>8.0f} "
                  f"{m['seconds']:>8.1f}", flush=True)

    import kdistill.pipeline as pipeline

    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w", encoding="utf-8") as fh:
        json.dump({
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}",
            "command": "python benchmarks/softlabel_memory.py " + " ".join(sys.argv[1:]),
            "teacher": "BERT, 2 layers, hidden 32, word-level vocabulary of 2,000; max_length 64; eval batch 256",
            "chunk_rows": pipeline.SOFT_LABEL_CHUNK_ROWS,
            "measurements": measurements,
        }, fh, indent=2)
    print(f"written: {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
