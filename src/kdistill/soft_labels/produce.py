"""Producing the teachers' outputs: one pass per teacher and split, cached under a fingerprint, read lazily after.

For each split the run uses and each of its teachers, the soft-label cache is looked up by a fingerprint of what
produces it (the teacher's files, the data file's bytes, the rows, the task and the tokenisation settings); a miss
runs the teacher once and streams its logits into the cache. Out-of-fold soft labels for the training rows come
from teachers fine-tuned on the other folds (`out_of_fold_logits`). Under torchrun/accelerate the pass is split
across the processes and the first one writes the cache.
"""

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from ..config import RunConfig, UserError
from ..data import load_split, split_file, split_limit
from ..files import write_json
from ..lock import file_lock
from ..rundir import is_main, paths, teachers
from ..students import resolve_model_path
from .cache import FORMAT_V1, cache_path, read_cache
from .fingerprint import fingerprint
from .writer import CacheWriter, topk_payload, write_cache


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    rows: list[dict],
    collate: Callable[[list[dict]], dict],
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """Run a model over tokenised rows in length-sorted batches (little padding); logits come back in row order:
    one tensor when every row gives the same shape (a vector per row), else a list of per-row tensors (per-token
    outputs, cut to each row's length). The result is sized from the rows, never from one batch.

    Args:
        rows: dicts with the model's input fields (input_ids, attention_mask, ...), unpadded.
        collate: pads a list of rows into a batch of tensors.
        progress: called with the number of rows done after each batch.
    """
    model.eval()
    device = next(model.parameters()).device
    # Text rows go shortest first, so each batch pads little; other rows keep their order.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].get("input_ids", ())))
    per_row: list[torch.Tensor | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in chunk]).items()}
        outputs = model(**batch)
        logits = (outputs["logits"] if isinstance(outputs, dict) else outputs[0]).float().cpu()
        for j, i in enumerate(chunk):
            # Per-position outputs ([B, L, C]) are cut to the row's own length: padding is not an item.
            per_row[i] = logits[j, : len(rows[i]["input_ids"])] if logits.dim() > 2 else logits[j]
        if progress is not None:
            progress(len(chunk))
    if not per_row:
        raise ValueError("no rows to label")
    if all(r.shape == per_row[0].shape for r in per_row):
        return torch.stack(per_row)  # one vector (or equal-length block) per row
    return per_row  # ragged: a [items_i, C] tensor per row, in row order


logger = logging.getLogger(__name__)

SPLITS = ("train", "transfer", "validation", "test")
# Rows tokenised and labelled by the teacher at a time in the soft-label pass (memory: one chunk's tokens).
SOFT_LABEL_CHUNK_ROWS = 10_000


def rank_world(together: bool = True) -> tuple[int, int]:
    import torch.distributed as dist

    if together and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _from_first_process(value: Any, together: bool) -> Any:
    """The first process's `value`, on every process (itself when there is one process)."""
    import torch.distributed as dist

    if rank_world(together)[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(together: bool) -> None:
    import torch.distributed as dist

    if rank_world(together)[1] > 1:
        dist.barrier()


def teacher_seed(config: RunConfig) -> int:
    seed = config.teacher.teacher_seed
    return seed if seed is not None else config.distill.seed


def backbone(config: RunConfig) -> str:
    """What out-of-fold teachers are fine-tuned from."""
    return config.teacher.teacher_backbone or config.teacher.teacher_model


# What the pass writes (a dense float32 payload); part of every v2 fingerprint, so a top-k or fp16 cache of the same
# split is another file.
PAYLOAD = {"payload": "dense", "top_k": None, "value_dtype": "float32"}


def payload(config: RunConfig) -> dict:
    """What the pass writes for this run: PAYLOAD, or with a top k (`RunConfig.soft_label_top_k`) the top-k payload,
    its values in float16 (the cache docstring's layout)."""
    k = config.soft_label_top_k()
    return PAYLOAD if not k else {"payload": "topk", "top_k": k, "value_dtype": "float16"}


class TopK(NamedTuple):
    """A chunk of the pass reduced to top-k as it ran (a task's `predict_items(..., top_k=k)`): per row the [items, k]
    values and indices and the [items] tail, and the teacher's vocabulary size."""

    values: list
    indices: list
    tail: list
    classes: int


def topk_rows(logits: torch.Tensor | list[torch.Tensor], k: int) -> TopK:
    """Full per-row logits ([items_i, C] each) as a TopK chunk."""
    rows = [topk_payload(row.float(), k) for row in logits]
    return TopK([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], int(logits[0].shape[-1]))


class TopKRows:
    """A top-k cache (SoftLabels with payload "topk") indexed by rows as the collators index a source: `rows[idx]`
    is per row the tuple (values [items, k] float32, indices [items, k] int64, tail [items] float32)."""

    payload, ragged = "topk", True

    def __init__(self, cache: Any):
        self.cache = cache
        self.classes, self.top_k, self.items = cache.classes, cache.top_k, cache.items

    def __len__(self) -> int:
        return len(self.cache)

    @property
    def bytes_per_item(self) -> float:
        """The cache file's bytes per item (token), header and row offsets included."""
        return os.path.getsize(self.cache.path) / max(self.items, 1)

    def __getitem__(self, idx):
        values, indices, tail = self.cache.gather_topk(idx)
        return list(zip(values, indices, tail))


def is_topk(source: Any) -> bool:
    """Whether a soft-label source holds a top-k payload (then it has no dense logits to read)."""
    if isinstance(source, ConcatSources):
        return is_topk(source.sources[0])
    return getattr(source, "payload", "dense") == "topk"


def _settings(config: RunConfig, split: str, source: str) -> dict:
    """The settings a v1 cache was fingerprinted with (rows and tokenisation); v2 adds the task and the payload."""
    data = config.data
    settings = {
        "split": split, "source": source, "text_column": data.text_column, "text_pair_column": data.text_pair_column,
        "max_length": data.max_length, "limit": split_limit(data, split),
    }
    if split == "train" and data.train_sample_seed is not None:  # other rows than the first `limit`
        settings["sample_seed"] = data.train_sample_seed
    return settings


def teacher_outputs(config: RunConfig, splits: tuple[str, ...] = SPLITS, progress: bool = False,
                    together: bool = True, loader=None) -> dict[str, list]:
    """Each configured split's soft labels, one source per teacher (in the config's order): read from the cache,
    or computed once and cached. A source is indexable by a LongTensor of rows (a lazily read cache).

    The teacher is loaded only if some split is missing from the cache. Under torchrun/accelerate launch, the first
    process decides what is missing; every process then labels its share of the rows (row r goes to process
    r mod n), the shares are gathered, the first process writes the cache once, and every process returns the same
    outputs (output_dir must be on a file system all processes share). `together=False` is for a caller that runs
    on one process only (evaluation): it labels everything itself.

    Args:
        loader: `(path) -> (model, tokenizer)` that loads a teacher on demand (the pipeline's, which remembers
            teachers it has loaded).
    """
    from ..tasks import get_task

    progress = progress and is_main(config)
    cache = paths(config).cache
    task_of, written = get_task(config.data.task), payload(config)
    data = config.data
    out: dict[str, list] = {}
    for split in splits:
        path = split_file(data, split)
        if path is None and not (data.dataset_name and split != "transfer"):
            continue
        source = path or f"{data.dataset_name}/{data.dataset_config_name}"
        oof = split == "train" and config.teacher.teacher_folds >= 2
        out[split] = []
        for tdir, _ in ([(resolve_model_path(backbone(config)), 1.0)] if oof else teachers(config)):
            settings = _settings(config, split, source)
            if oof:
                # Labels from teachers fine-tuned from the backbone: what makes them is the backbone, the teacher's
                # training settings, the folds and the seed, not the run's own teacher.
                t = config.teacher
                settings.update(folds=t.teacher_folds, seed=teacher_seed(config), epochs=t.teacher_epochs,
                                learning_rate=t.teacher_learning_rate, batch_size=t.teacher_batch_size)
            settings.update(task_of.cache_settings(data))
            fp = fingerprint(tdir, path, {**settings, "task": data.task, **written})
            file = cache_path(cache, "train-oof" if oof else split, fp)
            with ExitStack() as held:
                stored = read_cache(file, fp)
                if stored is None and data.task == "sequence_classification":
                    stored = _v1_cache(cache, "train-oof" if oof else split, tdir, path, settings)
                if stored is None and is_main(config):
                    # Another process (a run sharing this cache) may be making this very file: wait for it, then look
                    # again, rather than compute it twice. Held until the file is written (kdistill.lock).
                    held.enter_context(file_lock(file, f"soft-label cache {file}"))
                    stored = read_cache(file, fp)
                cached = _from_first_process(stored is not None, together)  # one decision: every process takes one path
                if cached and stored is None:
                    raise UserError(f"{file} is cached for the first process but unreadable here: output_dir (or "
                                    "soft_label_cache) must be on a file system every process shares")
                if not cached:
                    if oof:
                        from ..pipeline import out_of_fold_logits  # fold teachers train through the pipeline's trainer

                        # Every process takes part: the fold teachers train data-parallel like any Trainer run.
                        logits, record = out_of_fold_logits(config, progress)
                        if is_main(config):
                            write_json(file.replace(".safetensors", ".json"), record)
                            write_cache(file, logits, fp, **written)
                    else:
                        model, tokenizer = loader(tdir)
                        logits = _stream_to_cache(config, file, fp, split, model, tokenizer, progress, together)
                    _barrier(together)
                    # Read back lazily (the first process wrote it); a process that cannot see it keeps what it
                    # computed.
                    stored = read_cache(file, fp)
                    if stored is None:
                        if logits is None:
                            raise UserError(f"{file} was written by the first process but is unreadable here: "
                                            "output_dir (or soft_label_cache) must be on a file system every process "
                                            "shares")
                        stored = logits
                    logger.info("soft labels for %s: %d rows computed and cached in %s", split, len(stored), file)
                else:
                    logger.info("soft labels for %s: %d rows reused from %s", split, len(stored), file)
            if is_topk(stored):
                stored = stored if isinstance(stored, TopKRowList) else TopKRows(stored)
                logger.info("soft labels for %s: top-%d of %d classes, %d items, %.1f bytes per item", split,
                            stored.top_k, stored.classes, stored.items, stored.bytes_per_item)
            out[split].append(stored)
    return out


def out_of_fold(fold_of: Sequence[int], fit: Callable[[int, list[int]], Any],
                label: Callable[[Any, list[int]], torch.Tensor],
                keep_teachers: bool = False) -> tuple[torch.Tensor, list[dict], list]:
    """Out-of-fold soft labels: for each fold k in turn, `fit(k, rows of the other folds)` makes a teacher and
    `label(teacher, rows of fold k)` gives its logits on the rows it never saw.

    Returns the logits in row order, per fold its bookkeeping (fold, rows trained on and labelled, seconds), and the
    fold teachers if `keep_teachers` (else an empty list: a text teacher per fold is too large to keep).
    """
    folds = sorted(set(fold_of))
    logits: torch.Tensor | None = None
    record, kept = [], []
    for k in folds:
        start = time.perf_counter()
        held_out = [i for i, f in enumerate(fold_of) if f == k]
        teacher = fit(k, [i for i, f in enumerate(fold_of) if f != k])
        fold_logits = label(teacher, held_out)
        if logits is None:
            logits = torch.empty((len(fold_of), *fold_logits.shape[1:]), dtype=torch.float32)
        logits[held_out] = fold_logits
        if keep_teachers:
            kept.append(teacher)
        seconds = time.perf_counter() - start
        record.append({"fold": k, "trained_on": len(fold_of) - len(held_out), "labelled": len(held_out),
                       "seconds": seconds})
        logger.info("out-of-fold soft labels: fold %d of %d (%d rows) labelled in %.0f s", k + 1, len(folds),
                    len(held_out), seconds)
    if logits is None:
        raise UserError("out-of-fold soft labels: no rows")
    return logits, record, kept


def _stream_to_cache(config: RunConfig, file: str, fp: str, split: str, model, tokenizer, progress: bool,
                     together: bool):
    """Run the teacher over a split chunk by chunk; the first process streams the chunks into the cache file (so
    memory holds one chunk), and returns None; another process keeps them and returns them (it reads the file once
    the first has written it, if it can)."""
    chunks = teacher_pass_chunks(config, split, model, tokenizer, progress, together)
    if not is_main(config):
        return _joined(list(chunks))
    with CacheWriter(file, fp, **payload(config)) as writer:
        for chunk in chunks:
            if isinstance(chunk, TopK):
                writer.classes = writer.classes or chunk.classes
                writer.add_topk(chunk.values, chunk.indices, chunk.tail)
            else:
                writer.add(chunk)
    return None


def _v1_cache(cache: str, name: str, tdir: str, path: str | None, settings: dict):
    """A cache an earlier kdistill (format v1) made from these same inputs, read as it is (read_cache logs that), or
    None: then the split is computed again into a v2 cache."""
    fp = fingerprint(tdir, path, settings, cache_format=FORMAT_V1)
    return read_cache(cache_path(cache, name, fp), fp)


def _interleave(shares: list, world: int):
    """Rows dealt round-robin to `world` processes, put back in row order (shares differ in length by at most 1).
    Shares that are TopK chunks give one TopK chunk (a process with no rows gives an empty list)."""
    topk = [s for s in shares if isinstance(s, TopK)]
    if not topk and not any(len(s) for s in shares):  # a chunk with no rows (a packed split's short last chunk)
        return []
    if topk:
        parts = [s if isinstance(s, TopK) else TopK([], [], [], topk[0].classes) for s in shares]
        return TopK(*(_dealt([getattr(p, f) for p in parts]) for f in ("values", "indices", "tail")),
                    topk[0].classes)
    rows = _dealt(shares)
    return torch.stack(rows) if all(r.shape == rows[0].shape for r in rows) else rows


def _dealt(shares: list) -> list:
    return [share[j] for j in range(max(len(s) for s in shares)) for share in shares if j < len(share)]


def teacher_pass_chunks(config: RunConfig, split: str, teacher, tokenizer, progress: bool,
                        together: bool = True) -> Iterator:
    """The teacher's logits for one split, SOFT_LABEL_CHUNK_ROWS rows at a time, in row order: each item is a
    tensor [rows, C] or a list of per-row tensors (ragged outputs).

    Memory holds one chunk's tokens and logits, not the whole split's (as Python lists, a split's tokens cost far
    more than its text; see benchmarks/softlabel_memory.py). Within a chunk rows run in length-sorted batches.
    Under torchrun each process labels rows rank, rank + n, ...; chunk c of every process together covers one
    contiguous block of rows, so each chunk is gathered and interleaved as it comes, and every process yields the
    same chunks.
    """
    from ..tasks import get_task

    task = get_task(config.data.task)
    table = load_split(config.data, split)
    rows_in_split = len(table)
    rank, world = rank_world(together)
    # A task whose items come from the whole split (a causal LM's blocks, cut from one stream of lines) cannot deal
    # out the split's rows: every process makes every chunk's items (the same, deterministic) and labels items
    # rank, rank + world, ... of each chunk.
    deal_items = world > 1 and not task.rows_shard
    if world > 1 and not deal_items:  # this process's share: rows rank, rank + world, ...
        table = table.select(range(rank, rows_in_split, world))
    source = split_file(config.data, split) or split
    if rows_in_split == 0:
        raise UserError(f"{source}: no rows to label")
    # Every process takes part in every gather, also after its own (shorter) share ran out.
    chunks_needed = -(-(-(-rows_in_split // world)) // SOFT_LABEL_CHUNK_ROWS)
    inputs = task.teacher_inputs(table, tokenizer, config.data, SOFT_LABEL_CHUNK_ROWS, source, "teacher tokenizer")
    # A task that reduces its outputs to top-k batch by batch (a vocabulary's logits would not fit a chunk) is told k.
    k = config.soft_label_top_k()
    reduce = {"top_k": k} if k and task.predicts_topk else {}
    if deal_items:
        yield from _dealt_chunks(task, teacher, tokenizer, inputs, rank, world, config, reduce, progress, split)
        return
    with tqdm(total=len(table), desc=f"soft labels ({split})", unit="rows", disable=not progress) as bar:
        for _ in range(chunks_needed):
            rows = next(inputs, [])
            logits = task.predict_items(teacher, rows, tokenizer, batch_size=config.distill.per_device_eval_batch_size,
                                        progress=bar.update, **reduce) if rows else []
            if world > 1:
                import torch.distributed as dist

                shares: list = [None] * world
                dist.all_gather_object(shares, logits)
                logits = _interleave(shares, world)
            yield logits
    if next(inputs, None) is not None:  # runs the task's end of pass too (it reports truncation once, at the end)
        raise RuntimeError("the soft-label pass left rows unlabelled")


def _dealt_chunks(task, teacher, tokenizer, inputs: Iterator, rank: int, world: int, config: RunConfig,
                  reduce: dict, progress: bool, split: str) -> Iterator:
    """`teacher_pass_chunks` under torchrun for a task that cannot split its rows: each chunk's items dealt out,
    labelled, gathered and put back in order. Every process reads every chunk, so all take part in every gather."""
    import torch.distributed as dist

    with tqdm(desc=f"soft labels ({split})", unit="items", disable=not progress) as bar:
        for rows in inputs:
            mine = rows[rank::world]
            logits = task.predict_items(teacher, mine, tokenizer, batch_size=config.distill.per_device_eval_batch_size,
                                        progress=bar.update, **reduce) if mine else []
            shares: list = [None] * world
            dist.all_gather_object(shares, logits)
            yield _interleave(shares, world)


def teacher_pass(config: RunConfig, split: str, teacher, tokenizer, progress: bool, together: bool = True):
    """The whole split's logits in memory (`teacher_pass_chunks` joined): for small splits and tests."""
    return _joined(list(teacher_pass_chunks(config, split, teacher, tokenizer, progress, together)))


def _joined(chunks: list):
    """Chunks of the pass as one result: a tensor, or (ragged rows) one list of per-row tensors, or (TopK chunks)
    one list of per-row (values, indices, tail), as a top-k cache's rows read (TopKRows)."""
    chunks = [c for c in chunks if isinstance(c, (torch.Tensor, TopK)) or len(c)]  # chunks with no rows add none
    if chunks and all(isinstance(c, torch.Tensor) for c in chunks):
        return torch.cat(chunks)
    if chunks and all(isinstance(c, TopK) for c in chunks):
        return TopKRowList([(v.float(), i.long(), t.float()) for c in chunks
                            for v, i, t in zip(c.values, c.indices, c.tail)], chunks[0].classes)
    return [row for c in chunks for row in c]


def per_row(source: Any) -> torch.Tensor | list[torch.Tensor]:
    """A soft-label source in memory: one tensor [rows, C] when each row holds one item, else a list of per-row
    [items_i, C] tensors (ragged: words or tokens)."""
    if isinstance(source, RowList):
        return source
    if isinstance(source, list):
        return RowList(source)
    if isinstance(source, torch.Tensor) or not getattr(source, "ragged", False):
        return dense(source)
    return RowList(source[torch.arange(len(source))])


def dense(source: Any) -> torch.Tensor:
    """A soft-label source as one in-memory tensor (for small splits: diagnostics, evaluation)."""
    return source if isinstance(source, torch.Tensor) else source.dense()


def leading(source: Any, rows: int) -> torch.Tensor:
    """The first `rows` rows of a source in memory, their items stacked ([items, C]): for diagnostics on a split
    too large to hold whole."""
    got = source[torch.arange(min(rows, len(source)))]
    return torch.cat(list(got)) if isinstance(got, list) else got


def classes(source: Any) -> int:
    """The width of a source's logit vectors."""
    return source.shape[-1] if isinstance(source, torch.Tensor) else source.classes


class Scaled:
    """A soft-label source whose logits are multiplied by `factor` as they are read (a calibrated teacher's:
    logits / T_fit), so the cache keeps the teacher's own."""

    def __init__(self, source: Any, factor: float):
        self.source, self.factor = source, float(factor)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def classes(self) -> int:
        return classes(self.source)

    def __getitem__(self, idx):
        got = self.source[idx]
        return [row * self.factor for row in got] if isinstance(got, list) else got * self.factor

    def dense(self) -> torch.Tensor:
        return dense(self.source) * self.factor


class RowList(list):
    """Ragged per-row tensors kept in memory, indexable by a LongTensor of rows like a cache."""

    def __getitem__(self, idx):
        if isinstance(idx, torch.Tensor):
            return [list.__getitem__(self, i) for i in idx.tolist()]
        return list.__getitem__(self, idx)


class TopKRowList(RowList):
    """A top-k pass's rows kept in memory (a process that does not write the cache): per row (values, indices,
    tail), indexable like TopKRows."""

    payload, ragged = "topk", True

    bytes_per_item = float("nan")  # never written by this process

    def __init__(self, rows: list, classes: int):
        super().__init__(rows)
        self.classes = classes
        self.top_k = int(rows[0][0].shape[-1]) if rows else 0
        self.items = sum(len(r[2]) for r in rows)


class ConcatSources:
    """Several splits' soft-label sources as one, indexed by the rows of their splits laid end to end (the
    collator's one index space: train, then transfer, then validation). In-memory tensors are concatenated once;
    a lazily read cache stays lazy, each batch reading only its own rows."""

    def __init__(self, sources: list):
        sources = [s if isinstance(s, RowList) else RowList(s) if isinstance(s, list) else s for s in sources]
        if all(isinstance(s, torch.Tensor) for s in sources):
            self.sources, self.whole = sources, torch.cat(sources)
        else:
            self.sources, self.whole = sources, None
        self.starts = torch.tensor([0, *torch.tensor([len(s) for s in sources]).cumsum(0).tolist()])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def classes(self) -> int:
        return classes(self.sources[0])

    def __getitem__(self, idx: torch.Tensor):
        if self.whole is not None:
            return self.whole[idx]
        if len(self.sources) == 1:
            return self.sources[0][idx]
        which = torch.searchsorted(self.starts, idx, right=True) - 1
        parts = []
        for k in which.unique().tolist():
            pos = (which == k).nonzero().flatten()
            parts.append((pos, self.sources[k][idx[pos] - self.starts[k]]))
        first = parts[0][1]
        if isinstance(first, torch.Tensor):  # one item per row: one tensor, rows put back in batch order
            out = first.new_empty((len(idx), *first.shape[1:]))
            for pos, rows in parts:
                out[pos] = rows
            return out
        got: list = [None] * len(idx)  # ragged rows: a list in batch order
        for pos, rows in parts:
            for j, p in enumerate(pos.tolist()):
                got[p] = rows[j]
        return got
