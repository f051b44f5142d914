"""Evaluating a run: quality, fidelity to the teacher, calibration (the task's metrics, pure functions in
`metrics.py`), and what a model costs: parameters, size on disk, CPU latency and throughput. This module times
models, so nothing in the test suite asserts on its numbers, only on their presence.
"""

import os
import statistics
import time
from collections.abc import Callable

import torch

from .errors import UserError
from .files import update_json
from .config import RunConfig
from .data import load_split, split_file
from .metrics import disagreement_rate
from .pipeline import _trust, combine_soft_labels, load_teacher, prepare_split, task_of, teacher_soft_labels
from .rundir import check_evaluated_run, holding_output_dir, is_main, paths, teacher_dir, teachers
from .students import count_parameters, load_classifier, load_tokenizer
from .validate import check_run

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for the 'where' of a timing."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def size_on_disk(directory: str) -> int:
    """Bytes of the weight files in a saved model directory."""
    return sum(
        os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory) if n.endswith(_WEIGHT_SUFFIXES)
    )


@torch.inference_mode()
def measure_speed(
    model: torch.nn.Module,
    rows: list[dict],
    collate: Callable[[list[dict]], dict],
    batches: int = 20,
    batch_size: int = 64,
) -> dict[str, float]:
    """Median and p95 latency at batch 1 (ms) and throughput at batch `batch_size` (rows/s) on real rows.

    Rows are taken in order and cycled, so two models measured on the same rows see the same lengths.
    """
    if batches < 1:
        raise ValueError(f"measure_speed needs at least one batch, got {batches}")
    model.eval()
    warmup = 3

    def batch_of(start: int, size: int) -> dict:
        chunk = [rows[(start + i) % len(rows)] for i in range(size)]
        return collate(chunk)

    singles = [batch_of(i, 1) for i in range(batches + warmup)]
    times = []
    for i, batch in enumerate(singles):
        t0 = time.perf_counter()
        model(**batch)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    big = [batch_of(i * batch_size, batch_size) for i in range(max(1, batches // 4) + 1)]
    model(**big[0])  # warm-up
    t0 = time.perf_counter()
    for batch in big[1:]:
        model(**batch)
    elapsed = time.perf_counter() - t0
    times.sort()
    return {
        "latency_ms_b1": statistics.median(times),
        "latency_ms_b1_p95": times[min(len(times) - 1, int(0.95 * len(times)))],
        f"throughput_b{batch_size}": batch_size * (len(big) - 1) / elapsed,
        "torch_threads": torch.get_num_threads(),
    }


@torch.inference_mode()
def measure_lm_speed(model: torch.nn.Module, rows: list[dict], collate: Callable[[list[dict]], dict],
                     batches: int = 20, batch_size: int = 64, prompt_tokens: int = 32, new_tokens: int = 32,
                     prompts: int = 4) -> dict[str, float]:
    """A causal LM's tokens per second: scoring (`scoring_tokens_per_s`, every position of `batches` batches of
    `batch_size` rows, after one warm-up batch) and greedy generation at batch 1 (`generation_tokens_per_s_b1`:
    exactly `new_tokens` new tokens after each of the first `prompts` rows' first `prompt_tokens` tokens, after
    one warm-up prompt). Rows are taken in order and cycled, as in `measure_speed`."""
    if batches < 1:
        raise ValueError(f"measure_lm_speed needs at least one batch, got {batches}")
    model.eval()
    device = next(model.parameters()).device
    big = [collate([rows[(i * batch_size + j) % len(rows)] for j in range(batch_size)]) for i in range(batches + 1)]
    big = [{k: v.to(device) for k, v in b.items()} for b in big]
    model(**big[0])  # warm-up
    t0 = time.perf_counter()
    for batch in big[1:]:
        model(**batch)
    scoring = sum(int(b["attention_mask"].sum()) for b in big[1:]) / (time.perf_counter() - t0)
    config = model.config
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    starts = [torch.tensor([rows[i % len(rows)]["input_ids"][:prompt_tokens]], device=device)
              for i in range(prompts + 1)]
    timed = 0.0
    for i, ids in enumerate(starts):
        t0 = time.perf_counter()
        # min_new_tokens: an early eos would leave fewer tokens than counted
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
        if i:  # the first is the warm-up
            timed += time.perf_counter() - t0
    return {"scoring_tokens_per_s": scoring, "generation_tokens_per_s_b1": prompts * new_tokens / timed}


# ------------------------------------------------------------------------------------------ evaluating a run

def _load_student(config, sdir: str):
    """The trained student in `sdir`, its tokenizer and its label map."""
    if not os.path.isfile(os.path.join(sdir, "config.json")):
        raise UserError(f"no student in {sdir}: run `kdistill distill` first")
    student = load_classifier(sdir, "student", **_trust(config), auto_model=task_of(config).auto_model)
    tokenizer = load_tokenizer(sdir, "student tokenizer", **_trust(config))
    return student, tokenizer, {str(k): int(v) for k, v in student.config.label2id.items()}


def _speed(config: RunConfig, student, rows, collate, teacher, label2id) -> dict:
    """Student and teacher CPU speed on the same test rows, measured one after the other (a ratio of one run)."""
    task = task_of(config)
    teacher_tok = load_teacher(config, teacher_dir(config), label2id)[1]
    teacher_rows = task.model_rows(prepare_split(config, "test", teacher_tok, label2id, who="teacher tokenizer"),
                                   teacher_tok)
    n = config.distill.speed_batches
    out = {"student": measure_speed(student, rows, collate, batches=n),
           "teacher": measure_speed(teacher, teacher_rows, task.pad_inputs(teacher_tok), batches=n)}
    out["speedup_b1"] = out["teacher"]["latency_ms_b1"] / out["student"]["latency_ms_b1"]
    out["speedup_b64"] = out["student"]["throughput_b64"] / out["teacher"]["throughput_b64"]
    if task.auto_model == "AutoModelForCausalLM":  # tokens per second, scoring and generating, one after the other
        size = config.distill.per_device_eval_batch_size
        out["student"].update(measure_lm_speed(student, rows, collate, batches=n, batch_size=size))
        out["teacher"].update(measure_lm_speed(teacher, teacher_rows, task.pad_inputs(teacher_tok), batches=n,
                                               batch_size=size))
        for key in ("scoring_tokens_per_s", "generation_tokens_per_s_b1"):
            out[f"speedup_{key.removesuffix('_tokens_per_s_b1').removesuffix('_tokens_per_s')}"] = \
                out["student"][key] / out["teacher"][key]
    return out


def completion_rouge_l(config: RunConfig, model, tokenizer) -> float | None:
    """The mean ROUGE-L (`metrics.mean_rouge_l`) of `model`'s greedy completions of the test split's prompts against
    their responses, for a causal_lm test split of prompt/response rows; None for any other."""
    from .data import load_split
    from .generate import Decoding, complete
    from .metrics import mean_rouge_l

    task, data = task_of(config), config.data
    table = load_split(data, "test")
    if not getattr(task, "prompt_response", None) or table is None or not task.prompt_response(table, data):
        return None
    prompts, references = ([str(t) for t in table[c][:]] for c in (data.prompt_column, data.response_column))
    # As long a completion as the longest response may need, within the positions the prompts leave.
    longest = max(len(ids) for ids in tokenizer(references, add_special_tokens=False)["input_ids"])
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    room = limit - max(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]) if limit else 64
    decoding = Decoding(max_new_tokens=max(1, min(longest + 1, room, data.max_length)),
                        batch_size=config.distill.per_device_eval_batch_size)
    return mean_rouge_l(complete(model, tokenizer, prompts, decoding), references)


def speed(config: RunConfig) -> dict:
    """CPU latency and throughput of the run's trained student and of its teacher, plus their size."""
    sdir, tdir = paths(config).student, teacher_dir(config)
    student, tokenizer, label2id = _load_student(config, sdir)
    teacher = load_teacher(config, tdir, label2id)[0]
    task = task_of(config)
    rows = task.model_rows(prepare_split(config, "test", tokenizer, label2id), tokenizer)
    out = _speed(config, student, rows, task.pad_inputs(tokenizer), teacher, label2id)
    out["student"].update(parameters=count_parameters(student), size_bytes=size_on_disk(sdir))
    out["teacher"].update(parameters=count_parameters(teacher), size_bytes=size_on_disk(tdir))
    return out


def shared_items(per_teacher: list, labels=None) -> list[torch.Tensor]:
    """Several teachers' logits over one split as flat [items, C] tensors over the same items: as they are for one
    item per row; for ragged rows (words), each row's items that every teacher saw (another tokenizer may truncate a
    sentence elsewhere; an all-zero vector is a word a teacher never saw) and that carry a label."""
    if isinstance(per_teacher[0], torch.Tensor):
        return list(per_teacher)
    if len(per_teacher[0]) and isinstance(per_teacher[0][0], tuple):
        # top-k caches: each teacher's top-1 class at every labelled position (what disagreement compares)
        return [torch.cat([row[1][:, 0][torch.as_tensor(y).ne(-100)] if labels is not None else row[1][:, 0]
                           for row, y in zip(rows, labels if labels is not None else rows)]) for rows in per_teacher]
    out: list[list[torch.Tensor]] = [[] for _ in per_teacher]
    for r, rows in enumerate(zip(*per_teacher)):
        n = min(len(x) for x in rows)
        row_labels = None if labels is None else torch.as_tensor(labels[r])[:n]
        n = n if row_labels is None else len(row_labels)
        keep = torch.stack([x[:n].ne(0).any(dim=-1) for x in rows]).all(dim=0)
        if row_labels is not None:
            keep &= row_labels.ne(-100)
        for i, x in enumerate(rows):
            out[i].append(x[:n][keep])
    return [torch.cat(parts) for parts in out]


def _each_teacher(config: RunConfig, per_teacher: list, labels, label2id: dict[str, int]) -> dict:
    """eval.json's `teachers` (each teacher's path, weight, task metrics from its own soft labels, parameters and
    size) and `teacher_disagreement` (the share of items whose top-1 class the teachers do not all give)."""
    task = task_of(config)
    entries = []
    for (path, weight), logits in zip(teachers(config), per_teacher):
        entry = {"path": path, "weight": weight, **task.eval_metrics(logits, labels, None, label2id)}
        entry.update(parameters=count_parameters(load_teacher(config, path, label2id)[0]), size_bytes=size_on_disk(path))
        entries.append(entry)
    return {"teachers": entries, "teacher_disagreement": disagreement_rate(shared_items(per_teacher, labels))}


@holding_output_dir
def evaluate(config: RunConfig, progress: bool = False) -> dict:
    """Quality, fidelity to the teacher, calibration, size and CPU speed of the student; written to eval.json.

    A single-process step: under torchrun/accelerate launch only the first process evaluates (the others return
    an empty dict), so the timings are not shared with replicas of itself.
    """
    if not is_main(config):
        return {}
    check_run(config)
    check_evaluated_run(config)
    p = paths(config)
    sdir, tdir = p.student, teacher_dir(config)
    task = task_of(config)
    student, tokenizer, label2id = _load_student(config, sdir)
    test = prepare_split(config, "test", tokenizer, label2id)
    if test is None:
        raise UserError("data: evaluation needs test_file or validation_file")
    per_teacher = teacher_soft_labels(config, ("test",), progress, together=False)["test"]
    # Several teachers are scored as the ensemble they are, their mixture at T = 1 (the student trained on it at the
    # run's temperature; a mixture at T = 2 read at T = 1 would be a sharper, differently calibrated distribution).
    teacher_logits = combine_soft_labels(config, per_teacher, temperature=1.0)
    # A cross-tokenizer student (the uld term) has other items than its teacher: the teacher is scored on its own
    # tokens, and fidelity (agreement, KL), which compares the two item by item, is not measured.
    cross = "uld" in config.distill.objective_weights()
    teacher_labels = None
    if cross:
        teacher_test = prepare_split(config, "test", load_teacher(config, tdir, label2id)[1], label2id,
                                     who="teacher tokenizer")
        task.check_teacher_logits(teacher_logits, len(teacher_test), len(label2id))
        teacher_labels = task.item_labels(teacher_test)
    else:
        task.check_teacher_logits(teacher_logits, len(test), len(label2id))
    rows = task.model_rows(test, tokenizer)
    collate = task.pad_inputs(tokenizer)
    student_logits = task.predict_items(student, task.item_rows(test, tokenizer), tokenizer,
                                        batch_size=config.distill.per_device_eval_batch_size)
    labels = task.item_labels(test)
    result: dict = {"split": split_file(config.data, "test"), "rows": len(test)}
    result["student"] = task.eval_metrics(student_logits, labels, None if cross else teacher_logits, label2id)
    # With several teachers, "teacher" is their combination, scored at T = 1.
    result["teacher"] = task.eval_metrics(teacher_logits, teacher_labels if cross else labels, None, label2id)
    if cross:
        from .tasks.causal_lm import cross_tokenizer_fidelity

        teacher_tokenizer = load_teacher(config, tdir, label2id)[1]
        aligned = task.align_to_teacher(test, load_split(config.data, "test"), tokenizer, teacher_tokenizer,
                                        config.data, len(teacher_logits), 0)
        result["student"].update(cross_tokenizer_fidelity(student_logits, labels, aligned, teacher_logits, tokenizer,
                                                          teacher_tokenizer, config.data.block_size))
        result["fidelity"] = ("across tokenizers (uld): at positions where student and teacher tokens end at the same "
                              "character; agreement of their top-1 tokens' first characters, and the ULD distance")
    if len(per_teacher) > 1:
        result.update(_each_teacher(config, per_teacher, labels, label2id))

    result["student"].update(parameters=count_parameters(student), size_bytes=size_on_disk(sdir))
    # load_teacher remembers the teacher by content: a sweep's cells, which share one, load it once.
    teacher = load_teacher(config, tdir, label2id)[0]
    result["teacher"].update(parameters=count_parameters(teacher), size_bytes=size_on_disk(tdir))
    if "teachers" in result:  # an ensemble costs all its members (its speed is timed on the first)
        for key in ("parameters", "size_bytes"):
            result["teacher"][key] = sum(entry[key] for entry in result["teachers"])
    rouge = completion_rouge_l(config, student, tokenizer)
    if rouge is not None:
        result["student"]["rouge_l"] = rouge
        result["teacher"]["rouge_l"] = completion_rouge_l(config, teacher, load_teacher(config, tdir, label2id)[1])
    if config.distill.speed_batches > 0:
        timing = _speed(config, student, rows, collate, teacher, label2id)
        result["student"].update(timing.pop("student"))
        result["teacher"].update(timing.pop("teacher"))
        result.update(timing)  # speedup_b1, speedup_b64 (and a causal LM's speedup_scoring, speedup_generation)
    result["compression"] = result["teacher"]["parameters"] / result["student"]["parameters"]
    update_json(p.eval, result)  # the same scores again: nothing written (a read-only finished run can be evaluated)
    return result
