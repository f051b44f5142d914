"""Causal language modelling: plain text packed into blocks of `block_size` tokens, one prediction per position.

A plain-text file (.txt) is read as its lines (ends kept, so they join back into the file's text); a split's rows
for the models are *blocks*: the lines' tokens as one stream, cut into blocks of exactly `block_size` ids
(`lm_data.pack_blocks`, no padding), the tail shorter than a block dropped. Lines are tokenised
SOFT_LABEL_CHUNK_ROWS at a time with the remainder carried into the next chunk, so the teacher pass and the student
see the same blocks and memory holds one chunk's tokens.

Items are tokens: position t of a block predicts its token t + 1, so `labels` are the block shifted left by one
(the last position -100: its next token starts the next block) and `item_mask` marks positions 0..block_size - 2.
The labels are stored shifted (the model is never given them), so `hard_ce` is next-token cross-entropy as it
stands, and the teacher's outputs at position t, cached for every position, line up with the student's.

The cache keeps per token the teacher's top-k logits (`default_top_k`, `soft_label_top_k`), reduced batch by
batch as the teacher runs (a `[tokens, vocabulary]` chunk of logits would not fit in memory): the lm_ terms
(losses/lm.py) read them; `soft_label_top_k: 0` caches every logit for `soft_kl`.

A prompt/response file (.jsonl, one JSON object per line with `prompt_column` and `response_column` keys) gives one
example per row instead (`lm_data.prompt_response_examples`: prompt + response + eos, cut to max_length tokens,
the prompt first), not packed; its labels, shifted the same way, are -100 wherever the next token is the prompt's,
so only the response (and its eos) is trained on and scored; batches are padded on the right to their longest row.
The teacher's top-k is cached for every position of each row (the prompt's too: its rows are read back by position).

Cross-tokenizer distillation (the `uld` term, Universal Logit Distillation: Boizard et al. 2024) reads the same
top-k cache, made by the teacher over its own blocks of the same text: the seam is the character. Both tokenizers'
blocks are cut from one stream, the split's lines joined, so every token has a character span in that stream
(`stream_offsets`: each line tokenised as `packed_chunks` does, its offsets shifted by the characters before it,
recomputed from the text and the teacher's tokenizer, deterministic, so the cache keeps no offsets). Student token s
and teacher token j that end at the same character have read the same text (`lm_data.align_by_offsets`, exact), so
student position s % block_size of block s // block_size is paired with the teacher's cached position j % block_size
of the teacher's block j // block_size: `teacher_items` stores per student position the flat item j (plus the
split's first teacher item), or -1 where no teacher token ends where the student's does or j fell in the teacher's
dropped tail. `CausalLMCollator` reads the cached rows those items sit in and gives `teacher_aligned_probs` (the
teacher's top-k probabilities at each student position) and `teacher_aligned_mask`; the uld term compares them with
the student's sorted probabilities, and the hard term stays the student's own next-token CE. The two models' blocks
start at different characters, so a teacher position near its block's start has read less of the text than the
student position paired with it (at most block_size - 1 teacher tokens of context are lost, on about one position
in block_size); packing is kept so that the cache is the very one the same-tokenizer terms read.

Prompt/response rows are not a stream but one text each (prompt + response): `example_items` gives each student
example the teacher's cache row for the same table row (`teacher_row`) and, per position, the teacher's position in
it whose token ends at the same character counted from the prompt's start (`teacher_items`, -1 for none), both
tokenisations cut to max_length as `lm_data.prompt_response_example` cuts them (`lm_data.kept_lengths`); the collator
reads them with `aligned_example_teacher`. A row one tokenizer leaves out (no response token left) pairs nothing.

A transfer file is text too, packed the same way, and its blocks keep their next-token labels
(`transfer_labelled`): teacher completions (`kdistill generate --teacher`) are then Kim & Rush's (2016)
sequence-level KD, trained on even by a student with no teacher term.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from .base import IGNORE_INDEX, ItemCollator, Task

logger = logging.getLogger(__name__)

# Lines tokenised at a time when packing a split (the teacher pass and the student read the same blocks).
PACK_CHUNK_ROWS = 10_000
_DROPPED_REPORTED: set[tuple] = set()


class BlockLabels(list):
    """Per block its shifted labels ([block_size] each), and `characters`: the length of the text the block's
    predicted tokens spell (what `lm_data.loss_per_character` divides by)."""

    characters: int


def shifted_labels(block: list[int]) -> list[int]:
    """Position t's label is token t + 1; the last position has none (-100)."""
    return [*block[1:], IGNORE_INDEX]


def token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, no special tokens: ``tokenizer(texts, add_special_tokens=False)["input_ids"]``.

    A fast tokenizer whose backend neither truncates nor pads is asked directly (`tokenizers`' encode_batch, the call
    transformers makes), skipping the Python conversion of every encoding to a dict: for tiny Shakespeare's 35,526
    training lines that conversion was 1.0 of the 2.4 s the split took to tokenise and pack.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def packed_chunks(texts: list[str], tokenizer: Any, block_size: int, chunk_rows: int = PACK_CHUNK_ROWS,
                  source: str = "data") -> Iterator[list[list[int]]]:
    """The blocks of `texts` (their tokens as one stream), one list per `chunk_rows` texts: a chunk's tail shorter
    than a block is carried into the next, and the last one dropped (logged once)."""
    from ..lm_data import pack_blocks

    carry: list[int] = []
    total = 0
    for start in range(0, len(texts), chunk_rows):
        ids = token_ids(tokenizer, texts[start : start + chunk_rows])
        stream = [*carry, *(i for row in ids for i in row)]
        blocks, dropped = pack_blocks([stream], block_size)
        carry = stream[len(stream) - dropped :] if dropped else []
        total += len(stream) - dropped
        yield blocks
    key = (source, len(carry), total, block_size)
    if key not in _DROPPED_REPORTED:
        _DROPPED_REPORTED.add(key)
        logger.info("%s: %d tokens in %d blocks of %d; the last %d tokens (less than a block) left out", source,
                    total, total // block_size, block_size, len(carry))


def stream_offsets(texts: list[str], tokenizer: Any, chunk_rows: int = PACK_CHUNK_ROWS) -> list[tuple[int, int]]:
    """The (start, end) character span of every token of `texts`' stream as `packed_chunks` tokenises it, in the
    characters of the texts joined."""
    spans: list[tuple[int, int]] = []
    base = 0
    for start in range(0, len(texts), chunk_rows):
        chunk = texts[start : start + chunk_rows]
        encoded = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
        for text, offsets in zip(chunk, encoded["offset_mapping"]):
            spans.extend((base + int(a), base + int(b)) for a, b in offsets)
            base += len(text)
    return spans


def teacher_items(texts: list[str], tokenizer: Any, teacher_tokenizer: Any, block_size: int, teacher_rows: int,
                  teacher_offset: int = 0) -> list[list[int]]:
    """Per student block of `texts`, per position, the flat index (row * block_size + position, rows from
    `teacher_offset`) of the teacher's cached item aligned with it by character end, or -1 (see the module docstring).

    Args:
        teacher_rows: the teacher's blocks of this split (its cache rows); a teacher token past them was dropped.
    """
    from ..lm_data import align_by_offsets

    aligned = align_by_offsets(stream_offsets(texts, teacher_tokenizer), stream_offsets(texts, tokenizer))
    covered, first = teacher_rows * block_size, teacher_offset * block_size
    flat = [first + j if 0 <= j < covered else -1 for j in aligned]
    return [flat[b : b + block_size] for b in range(0, len(flat) // block_size * block_size, block_size)]


def _example_spans(table, tokenizer, config) -> list[list[tuple[int, int]] | None]:
    """Per prompt/response row, the character spans (in prompt + response) of the tokens its example keeps, in
    example order, the eos as an empty span; None for a row the example leaves out (no response token left)."""
    from ..lm_data import kept_lengths

    out: list[list[tuple[int, int]] | None] = []
    eos = 1 if tokenizer.eos_token_id is not None else 0
    for start in range(0, len(table), PACK_CHUNK_ROWS):
        part = table[start : start + PACK_CHUNK_ROWS]
        prompts, responses = ([str(t) for t in part[c]] for c in (config.prompt_column, config.response_column))
        encode = lambda texts: tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)  # noqa: E731
        for prompt, p_spans, r_spans in zip(prompts, encode(prompts)["offset_mapping"],
                                            encode(responses)["offset_mapping"]):
            shift = len(prompt)
            target = [(int(a) + shift, int(b) + shift) for a, b in r_spans]
            end = target[-1][1] if target else shift
            target += [(end, end)] * eos  # the eos spells nothing: never aligned
            keep_prompt, keep_target = kept_lengths(len(p_spans), len(target), config.max_length)
            spans = [(int(a), int(b)) for a, b in p_spans][len(p_spans) - keep_prompt:] + target[:keep_target]
            # the example's rule: a row whose labels (shifted) hold no response token is left out
            out.append(spans if keep_target and (keep_prompt or keep_target > 1) else None)
    return out


def example_items(table, tokenizer, teacher_tokenizer, config, teacher_rows: int, teacher_offset: int = 0
                  ) -> tuple[list[int], list[list[int]]]:
    """For prompt/response rows: per student example, the teacher's cache row of the same table row, and per
    position the teacher's position in that row whose token ends at the same character of prompt + response (or -1;
    `lm_data.align_by_offsets`, exact). Each example is its own text, so there is no stream: spans are counted from
    the prompt's first character, and both tokenisations are truncated as `lm_data.prompt_response_example` cuts
    them (a teacher that kept less of the prompt leaves the student's first positions unpaired).

    Args:
        teacher_rows: the teacher's examples of this split (its cache rows), a check that both sides count alike.
    """
    from ..lm_data import align_by_offsets

    mine, theirs = _example_spans(table, tokenizer, config), _example_spans(table, teacher_tokenizer, config)
    if not teacher_rows and any(s is not None for s in mine):
        raise UserError("the teacher's tokenizer keeps no example of this data (every row lost its response to "
                        "max_length): raise max_length")
    if sum(s is not None for s in theirs) != teacher_rows:
        raise UserError(f"the teacher's soft labels hold {teacher_rows} rows but its tokenizer makes "
                        f"{sum(s is not None for s in theirs)} examples of this data; delete the soft-label cache "
                        "to recompute")
    rows, items, row = [], [], teacher_offset
    for student_spans, teacher_spans in zip(mine, theirs):
        if student_spans is not None:
            if teacher_spans is None:  # the teacher's example lost this row: nothing to read
                rows.append(teacher_offset)
                items.append([-1] * len(student_spans))
            else:
                rows.append(row)
                items.append(align_by_offsets(teacher_spans, student_spans))
        row += teacher_spans is not None
    return rows, items


_EXAMPLES_REPORTED: set[tuple] = set()


def example_chunks(table, tokenizer: Any, config, chunk_rows: int = PACK_CHUNK_ROWS, source: str = "data",
                   who: str = "tokenizer") -> Iterator[list[dict[str, list[int]]]]:
    """A prompt/response table's examples (`lm_data.prompt_response_example`, unpadded), one list per `chunk_rows`
    rows; how many rows were truncated to max_length and which were skipped (no response token left) is logged once."""
    from ..lm_data import prompt_response_examples

    truncated, skipped = 0, []
    for start in range(0, len(table), chunk_rows):
        part = table[start : start + chunk_rows]
        prompts, responses = ([str(t) for t in part[c]] for c in (config.prompt_column, config.response_column))
        made = prompt_response_examples(zip(token_ids(tokenizer, prompts), token_ids(tokenizer, responses)),
                                        config.max_length, tokenizer.eos_token_id)
        truncated += made.truncated
        skipped += [start + i for i in made.skipped]
        yield made.examples
    key = (source, who, len(table), truncated, tuple(skipped), config.max_length)
    if (truncated or skipped) and key not in _EXAMPLES_REPORTED:
        _EXAMPLES_REPORTED.add(key)
        shown = ", ".join(str(i + 1) for i in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
        logger.info("%s: %d of %d prompt/response rows longer than max_length=%d tokens (%s) were truncated; %d "
                    "skipped with no response token left%s", source, truncated, len(table), config.max_length, who,
                    len(skipped), f" (rows {shown})" if skipped else "")


def _pad(rows: list, length: int, value) -> Tensor:
    """Rows of lists (or [n, ...] tensors) padded on the right to `length` with `value`, stacked."""
    if isinstance(rows[0], Tensor):
        return torch.stack([torch.nn.functional.pad(r, (0, 0) * (r.dim() - 1) + (0, length - len(r)), value=value)
                            for r in rows])
    return torch.tensor([[*r, *[value] * (length - len(r))] for r in rows], dtype=torch.long)


class CausalLMCollator(ItemCollator):
    """Stacks a batch of blocks or prompt/response examples, their shifted labels and item mask, and the teacher's
    outputs by `idx`: `teacher_topk_values` / `teacher_topk_indices` / `teacher_topk_tail` from a top-k cache,
    `teacher_logits` from a dense one; or, for rows with `teacher_items` (a teacher with another tokenizer),
    `teacher_aligned_probs` and `teacher_aligned_mask` (`aligned_teacher`). Rows are padded on the right to the batch's longest (blocks are all
    block_size long: no padding); a padded position has attention 0 and label -100, so no loss reads it, and its
    input id (0) is never attended to by a real position of a causal model."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        idx = torch.tensor([f["idx"] for f in features], dtype=torch.long)
        longest = max(len(f["input_ids"]) for f in features)
        input_ids = _pad([f["input_ids"] for f in features], longest, 0)
        labels = _pad([f["labels"] for f in features], longest, IGNORE_INDEX)
        attention_mask = _pad([[1] * len(f["input_ids"]) for f in features], longest, 0)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "idx": idx,
                 "item_mask": labels.ne(IGNORE_INDEX)}
        if self.teacher_logits is None:
            return batch
        sources = self.teacher_logits if isinstance(self.teacher_logits, list) else [self.teacher_logits]
        if "teacher_items" in features[0]:
            if len(sources) > 1:
                raise UserError("the uld term reads one teacher's top-k cache; use one teacher")
            if "teacher_row" in features[0]:  # prompt/response examples: a row each, positions within it
                rows = torch.tensor([f["teacher_row"] for f in features], dtype=torch.long)
                positions = _pad([f["teacher_items"] for f in features], longest, -1)
                probs, mask = aligned_example_teacher(sources[0], rows, positions)
                batch.update(teacher_aligned_probs=probs, teacher_aligned_mask=mask)
                return batch
            items = torch.tensor([f["teacher_items"] for f in features], dtype=torch.long)
            probs, mask = aligned_teacher(sources[0], items, input_ids.shape[1])
            batch.update(teacher_aligned_probs=probs, teacher_aligned_mask=mask)
            return batch
        got = [source[idx] for source in sources]
        if isinstance(got[0][0], tuple):
            parts = []
            for rows in got:  # per teacher: values [B, L, k], indices [B, L, k], tail [B, L]
                values, indices, tail = zip(*rows)
                parts.append((_pad(values, longest, 0.0), _pad(indices, longest, 0), _pad(tail, longest, 0.0)))
            if len(parts) == 1:
                batch.update(zip(("teacher_topk_values", "teacher_topk_indices", "teacher_topk_tail"), parts[0]))
            else:  # each teacher stays itself: a teacher dim before k, weighted in the loss
                if len({p[0].shape[-1] for p in parts}) > 1:
                    raise UserError("several teachers' top-k caches hold different k; make them with one "
                                    "soft_label_top_k")
                batch.update(teacher_topk_values=torch.stack([p[0] for p in parts], dim=2),
                             teacher_topk_indices=torch.stack([p[1] for p in parts], dim=2),
                             teacher_topk_tail=torch.stack([p[2] for p in parts], dim=2),
                             teacher_topk_weights=torch.tensor(self.weights or [1.0] * len(parts)))
        else:
            dense = [_pad(list(rows), longest, 0.0) for rows in got]
            batch["teacher_logits"] = dense[0] if len(dense) == 1 else self.combine(dense)
        return batch


def aligned_teacher(source: Any, items: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """The teacher's top-k probabilities at flat cached `items` ([batch, length], -1 for none) and which are real:
    `([batch, length, k], [batch, length] bool)`, zeros where an item is -1. Only the cache rows the items sit in are
    read."""
    from ..losses.lm import teacher_buckets

    mask = items.ge(0)
    flat = torch.where(mask, items, items[mask][:1].sum())  # no item: any row the batch reads anyway
    rows, where = torch.unique(flat // block_size, return_inverse=True)
    got = source[rows]
    if not isinstance(got[0], tuple):
        raise UserError("the uld term reads a top-k soft-label cache; set soft_label_top_k (not 0)")
    values, _, tail = (torch.stack(part) for part in zip(*got))
    probs = teacher_buckets(values, tail)[..., :-1].exp()  # [rows, block_size, k]: each class's share at T = 1
    picked = probs[where, flat % block_size]
    return picked.masked_fill(~mask.unsqueeze(-1), 0.0), mask


def aligned_example_teacher(source: Any, rows: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    """`aligned_teacher` for prompt/response examples: the teacher's top-k probabilities at `positions` ([batch,
    length], -1 for none) of cache rows `rows` ([batch]), and which are real."""
    from ..losses.lm import teacher_buckets

    mask = positions.ge(0)
    got = source[rows]
    if not isinstance(got[0], tuple):
        raise UserError("the uld term reads a top-k soft-label cache; set soft_label_top_k (not 0)")
    out = torch.zeros(*positions.shape, got[0][0].shape[-1])
    for b, (values, _, tail) in enumerate(got):
        probs = teacher_buckets(values.float(), tail.float())[..., :-1].exp()  # [row's positions, k] at T = 1
        at = positions[b].clamp(0, len(probs) - 1)
        out[b] = probs[at]
    return out.masked_fill(~mask.unsqueeze(-1), 0.0), mask


def first_characters(tokenizer: Any) -> list[str]:
    """Per token id, the first character of the text the token decodes to alone ("" for a special token or one that
    spells nothing, such as part of a multi-byte character). A SentencePiece word-start token ("\u2581the"), whose
    lone decoding drops its space, begins with " "."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    for i in range(len(tokenizer)):
        if i in special:
            out.append("")
            continue
        piece = tokenizer.convert_ids_to_tokens(i)
        text = " " if isinstance(piece, str) and piece.startswith("\u2581") else tokenizer.decode([i])
        out.append("" if not text or text[0] == "\ufffd" else text[0])
    return out


def _same_next_text(s_id: int, t_id: int, mine: list[str], theirs: list[str], s_eos, t_eos) -> bool:
    """Whether two top-1 tokens begin the same next text: the same first character, or both the end of text. An id
    past a tokenizer's vocabulary (a padded output layer's spare rows) spells nothing."""
    if s_id == s_eos and t_id == t_eos:
        return True
    a = mine[s_id] if s_id < len(mine) else ""
    return bool(a) and a == (theirs[t_id] if t_id < len(theirs) else "")


def cross_tokenizer_fidelity(student_logits: list[Tensor], labels: list[Tensor], part, teacher_rows: Any,
                             tokenizer: Any, teacher_tokenizer: Any, block_size: int) -> dict[str, float]:
    """How close a student with another tokenizer is to its teacher, at the positions where both have read the same
    text (`align_to_teacher`'s pairs: a student token and a teacher token that end at the same character).

    - `aligned_positions`: the share of the student's predicted positions that have a teacher partner;
    - `next_text_agreement`: at those positions, the share where both models' most likely next tokens begin with
      the same character, or are both the end of text (the two vocabularies' top-1 compared as text, so a character-level student agrees with a
      BPE teacher whose next token is " the" when it predicts " ");
    - `aligned_uld`: the mean ULD distance there (`losses.lm.uld_loss`: L1 between the sorted probabilities, the
      teacher's top-k and its tail).

    Args:
        part: the student's test split with `teacher_items` (and, for prompt/response rows, `teacher_row`).
        teacher_rows: the teacher's top-k cache rows of the same split.
    """
    from ..losses.lm import teacher_buckets, uld_loss

    mine, theirs = first_characters(tokenizer), first_characters(teacher_tokenizer)
    examples = "teacher_row" in part.column_names
    predicted = paired = agree = 0
    uld = 0.0
    for b, (logits, y) in enumerate(zip(student_logits, labels)):
        items = torch.as_tensor(part[b]["teacher_items"], dtype=torch.long)
        y = torch.as_tensor(y)
        keep = y.ne(IGNORE_INDEX)
        predicted += int(keep.sum())
        keep &= items.ge(0)
        if not keep.any():
            continue
        rows = torch.full_like(items, int(part[b]["teacher_row"])) if examples else items // block_size
        positions = items if examples else items % block_size
        for row in rows[keep].unique().tolist():
            here = keep & rows.eq(row)
            values, indices, tail = teacher_rows[row]
            at = positions[here]
            probs = teacher_buckets(values[at].float(), tail[at].float())[..., :-1].exp()
            student = torch.as_tensor(logits).float()[here]
            uld += float(uld_loss(student, probs, num_items=1))
            top_s, top_t = student.argmax(-1).tolist(), indices[at, 0].tolist()
            agree += sum(_same_next_text(s_id, t_id, mine, theirs, tokenizer.eos_token_id,
                                         teacher_tokenizer.eos_token_id) for s_id, t_id in zip(top_s, top_t))
            paired += len(top_s)
    return {"aligned_positions": paired / max(predicted, 1), "next_text_agreement": agree / max(paired, 1),
            "aligned_uld": uld / max(paired, 1)}


def vocabulary_size(model: torch.nn.Module) -> int | None:
    """The model's output width: its lm_head's out features (a padded vocabulary counts its padding)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return getattr(head, "out_features", None) or getattr(getattr(model, "config", None), "vocab_size", None)


class CausalLM(Task):
    name = "causal_lm"
    item = "token"
    auto_model = "AutoModelForCausalLM"
    export_inputs = ("input_ids", "attention_mask")
    export_output_axes = {"logits": {0: "batch", 1: "sequence"}}
    headline_metric = "perplexity"
    default_top_k = 64
    predicts_topk = True
    # Blocks are cut from the whole stream of lines, not from each process's share of them: under torchrun the pass
    # deals out each chunk's blocks instead (soft_labels.produce).
    rows_shard = False
    # A transfer file is text (teacher completions: `kdistill generate --teacher`), packed like the training text and
    # trained on as next tokens, Kim & Rush's (2016) sequence-level KD under strategy hard.
    transfer_labelled = True
    own_formats = (".txt", ".jsonl")

    # --- data
    def read_file(self, path: str, config, labelled: bool):
        import datasets

        if path.lower().endswith(".jsonl"):
            from ..lm_data import read_prompt_response_jsonl

            rows = read_prompt_response_jsonl(path, config.prompt_column, config.response_column)
            return datasets.Dataset.from_dict({config.prompt_column: [p for p, _ in rows],
                                               config.response_column: [r for _, r in rows]})
        if not path.lower().endswith(".txt"):
            raise UserError(f"{path}: the causal_lm task reads plain text (.txt) or prompt/response JSON Lines "
                            "(.jsonl)")
        try:
            with open(path, encoding=config.encoding) as fh:
                text = fh.read()
        except UnicodeDecodeError as err:
            from ..files import decode_error

            raise decode_error(path, config.encoding, err) from None
        if not text.strip():
            raise UserError(f"{path}: the file holds no text")
        return datasets.Dataset.from_dict({config.text_column: text.splitlines(keepends=True)})

    def build_label_map(self, table, config, source: str) -> dict[str, int]:
        return {}  # the outputs are the tokenizer's vocabulary, not classes of the data

    def label_values(self, table, config) -> list:
        return []

    def encode_labels(self, table, config, label2id: dict[str, int], source: str) -> None:
        return None

    def cache_settings(self, config) -> dict:
        settings = {"block_size": config.block_size}
        if config.train_fraction is not None:  # the train and validation text are parts of one file
            settings["train_fraction"] = config.train_fraction
        return settings

    @staticmethod
    def prompt_response(table, config) -> bool:
        """Whether `table` holds prompt/response rows (a .jsonl file) rather than lines of text."""
        response = getattr(config, "response_column", None)
        return response in table.column_names and config.text_column not in table.column_names

    def _blocks(self, table, tokenizer, config, source: str) -> Iterator[list[list[int]]]:
        return packed_chunks([str(t) for t in table[config.text_column][:]], tokenizer, config.block_size,
                             source=source)

    def _prepare_examples(self, table, tokenizer, config, index_offset: int, source: str, who: str):
        import datasets

        examples = [e for chunk in example_chunks(table, tokenizer, config, source=source, who=who) for e in chunk]
        if not examples:
            raise UserError(f"{source}: no row keeps a response token within max_length={config.max_length} "
                            f"({who}); raise max_length or shorten the prompts")
        labels = [shifted_labels(e["labels"]) for e in examples]
        # The characters of the response the labels spell; the eos is predicted but spells none.
        predicted = tokenizer.batch_decode([[t for t in y if t != IGNORE_INDEX] for y in labels],
                                           skip_special_tokens=True)
        return datasets.Dataset.from_dict({
            "input_ids": [e["input_ids"] for e in examples],
            "labels": labels,
            "characters": [len(t) for t in predicted],
            "idx": list(range(index_offset, index_offset + len(examples))),
            "length": [len(e["input_ids"]) for e in examples],
        })

    def prepare(self, table, tokenizer, config, labels, index_offset: int = 0, source: str = "data",
                who: str = "tokenizer"):
        import datasets

        if self.prompt_response(table, config):
            return self._prepare_examples(table, tokenizer, config, index_offset, source, who)
        blocks = [b for chunk in self._blocks(table, tokenizer, config, source) for b in chunk]
        if not blocks:
            raise UserError(f"{source}: fewer than block_size={config.block_size} tokens ({who}); give more text or "
                            "a smaller block_size")
        predicted = tokenizer.batch_decode([b[1:] for b in blocks])
        return datasets.Dataset.from_dict({
            "input_ids": blocks,
            "labels": [shifted_labels(b) for b in blocks],
            "characters": [len(t) for t in predicted],
            "idx": list(range(index_offset, index_offset + len(blocks))),
            "length": [len(b) for b in blocks],
        })

    def teacher_inputs(self, table, tokenizer, config, chunk_rows: int, source: str, who: str) -> Iterator[list[dict]]:
        if self.prompt_response(table, config):
            for examples in example_chunks(table, tokenizer, config, chunk_rows, source, who):
                yield [{"input_ids": e["input_ids"]} for e in examples]
            return
        for blocks in packed_chunks([str(t) for t in table[config.text_column][:]], tokenizer, config.block_size,
                                    chunk_rows, source):
            yield [{"input_ids": b} for b in blocks]

    def model_rows(self, table, tokenizer) -> list[dict]:
        return [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in table["input_ids"][:]]

    def item_labels(self, table) -> BlockLabels:
        out = BlockLabels(torch.tensor(row, dtype=torch.long) for row in table["labels"][:])
        out.characters = int(sum(table["characters"][:]))
        return out

    # --- batches and models
    def collator(self, tokenizer: Any = None, teacher_logits: Any = None, **kwargs: Any) -> CausalLMCollator:
        return CausalLMCollator(self.pad_inputs(tokenizer), teacher_logits, **kwargs)

    @torch.inference_mode()
    def predict_items(self, model, rows: list[dict], tokenizer, batch_size: int = 64,
                      progress: Callable[[int], None] | None = None, top_k: int | None = None):
        """Per row (block or example) its logits at every position ([length, V] each), or with `top_k` a
        `produce.TopK` chunk reduced batch by batch on the model's device (the full logits of a chunk never sit in
        memory). Rows of different lengths are padded on the right in a batch and cut back to their own length."""
        from ..soft_labels.produce import TopK
        from ..soft_labels.writer import topk_payload

        model.eval()
        device = next(model.parameters()).device
        parts: list[list[Tensor]] = [[], [], []]
        classes = 0
        for start in range(0, len(rows), batch_size):
            batch = [r["input_ids"] for r in rows[start : start + batch_size]]
            lengths = [len(ids) for ids in batch]
            ids = _pad(batch, max(lengths), 0).to(device)
            mask = _pad([[1] * n for n in lengths], max(lengths), 0).to(device)
            out = model(input_ids=ids, attention_mask=mask)
            logits = (out["logits"] if isinstance(out, dict) else out[0]).float()
            classes = logits.shape[-1]
            if top_k:
                for part, t in zip(parts, topk_payload(logits, top_k, overwrite=True)):
                    part.extend(row[:n] for row, n in zip(t.cpu().unbind(0), lengths))
            else:
                parts[0].extend(row[:n] for row, n in zip(logits.cpu().unbind(0), lengths))
            if progress is not None:
                progress(len(ids))
        return TopK(*parts, classes) if top_k else parts[0]

    # --- outputs
    def check_teacher_logits(self, teacher_logits, rows: int, num_labels: int) -> None:
        if len(teacher_logits) != rows:
            raise UserError(f"the teacher's soft labels for the test data hold {len(teacher_logits)} blocks but the "
                            f"data has {rows}; delete the soft-label cache to recompute")

    def check_models(self, student, teacher_classes: int | None, weights: dict) -> None:
        from ..losses import TEACHER_FIELDS, TERMS

        if "uld" in weights:  # no vocabulary is compared; the teacher is read at positions aligned by characters
            others = [n for n in weights if n != "uld" and set(TERMS[n].needs) & set(TEACHER_FIELDS)]
            if others:
                raise UserError(f"the uld term aligns the teacher's positions with the student's by characters, and "
                                f"{others[0]} reads the teacher token by token; use uld with hard_ce only")
            return
        mine = vocabulary_size(student)
        if teacher_classes is not None and mine is not None and mine != teacher_classes:
            raise UserError(
                f"the teacher's vocabulary has {teacher_classes:,} tokens but the student's {mine:,} (the width of "
                "their output layers, lm_head), and same-tokenizer distillation compares them token id by token id; "
                "give the student the teacher's tokenizer and vocabulary size (student_init: from_teacher, or "
                f"student_config_overrides: {{vocab_size: {teacher_classes}}}), or pad the smaller one's embeddings "
                "to the other's size (a padded vocabulary, such as Qwen2.5-7B's 152,064 rows against its "
                "tokenizer's 151,936, keeps the extra rows unused); or, for a student with another tokenizer, use "
                "the cross-tokenizer term uld (objective: {uld: 0.5, hard_ce: 0.5})")

    def align_to_teacher(self, part, table, tokenizer, teacher_tokenizer, config, teacher_rows: int,
                         teacher_offset: int):
        """`part` (a split's prepared blocks) with `teacher_items` (see `teacher_items`) for the uld term."""
        if self.prompt_response(table, config):
            rows, items = example_items(table, tokenizer, teacher_tokenizer, config, teacher_rows, teacher_offset)
            if len(items) != len(part):
                raise RuntimeError(f"{len(items)} aligned examples for {len(part)} prepared ones")
            return part.add_column("teacher_row", rows).add_column("teacher_items", items)
        items = teacher_items([str(t) for t in table[config.text_column][:]], tokenizer, teacher_tokenizer,
                              config.block_size, teacher_rows, teacher_offset)
        if len(items) != len(part):
            raise RuntimeError(f"{len(items)} aligned blocks for {len(part)} prepared ones")
        return part.add_column("teacher_items", items)

    def eval_metrics(self, student_logits, labels, teacher_logits, label2id: dict[str, int]) -> dict:
        from .. import metrics

        return metrics.causal_lm_metrics(student_logits, labels, teacher_logits,
                                         getattr(labels, "characters", None))

    def trainer_metrics_for(self, model) -> None:
        # The Trainer then evaluates the loss only (prediction_loss_only): per-token logits of a whole validation
        # split are [tokens, vocabulary] and not worth gathering; `kdistill eval` scores perplexity and fidelity.
        return None
