"""Causal-LM data as pure functions (issue 17): the train/validation split of a text, packed blocks, prompt/response
examples, character-offset alignment of two tokenizations, the two tokenizers the benchmark trains, and loss per
character.

Labels follow transformers' convention throughout: `labels` holds the token ids themselves (-100 where no loss is
taken) and the model shifts them, so position t's logits are scored against labels[t + 1]. A block or example of n
tokens therefore gives at most n - 1 predictions; label 0 is never a target.

Nothing here reads a tokenizer except the two functions that build one (`train_bpe_tokenizer`, `char_tokenizer`),
which import `tokenizers` and `transformers` when called so that the rest stays light.
"""

import json
import math
import os
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import UserError
from .files import decode_error, relative_path_hint

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

IGNORE_INDEX = -100  # the label torch's cross-entropy (and transformers' models) skip
EOS_TOKEN = "<|endoftext|>"
# A pad token of its own, not the eos (GPT-2 pads with its eos): a collator that masks pad ids out of the labels
# would otherwise mask every eos too, and the model would never learn to stop.
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"


def split_text(text: str, train_fraction: float = 0.9) -> tuple[str, str]:
    """(train, validation): the first int(len(text) * train_fraction) characters and the rest.

    nanoGPT's split of tiny Shakespeare (Karpathy's `data/shakespeare_char/prepare.py`): by characters, before any
    tokenizer, so that models with different tokenizers are trained and scored on the same text.
    """
    if not 0 < train_fraction < 1:
        raise UserError(f"train_fraction must be between 0 and 1 (exclusive), not {train_fraction}")
    cut = int(len(text) * train_fraction)
    return text[:cut], text[cut:]


class PackedBlocks(NamedTuple):
    blocks: list[list[int]]  # each exactly block_size ids
    dropped: int  # ids at the end of the stream, fewer than a block, left out


def pack_blocks(token_id_lists: Iterable[Sequence[int]], block_size: int, eos_id: int | None = None) -> PackedBlocks:
    """Documents' ids concatenated into one stream (eos_id between consecutive documents when given) and cut into
    blocks of exactly `block_size` ids; no padding.

    The tail shorter than a block is dropped and its length returned as `dropped`: every id of the stream is in a
    block or in that tail. A block is a training example as it stands: input_ids = labels = the block (the model
    shifts), so it yields block_size - 1 predictions; the pair that straddles two blocks is not predicted (one in
    block_size), the price of blocks that need no overlap. This is transformers' `run_clm.py` grouping; nanoGPT
    instead samples block_size + 1 windows at random offsets.

    Empty documents add nothing (no two eos in a row).

    Args:
        token_id_lists: each document's ids, without an eos of its own.
        block_size: ids per block, at least 2 (one prediction).
        eos_id: the separator between documents; None to join them directly.
    """
    if block_size < 2:
        raise UserError(f"block_size must be at least 2 tokens (a block of n tokens gives n - 1 predictions), "
                        f"not {block_size}")
    stream: list[int] = []
    for ids in token_id_lists:
        if not len(ids):
            continue
        if stream and eos_id is not None:
            stream.append(eos_id)
        stream.extend(int(i) for i in ids)
    full = len(stream) // block_size * block_size
    blocks = [stream[start:start + block_size] for start in range(0, full, block_size)]
    return PackedBlocks(blocks, len(stream) - full)


def prompt_response_example(prompt_ids: Sequence[int], response_ids: Sequence[int], max_length: int,
                            eos_id: int | None = None, pad_id: int | None = None) -> dict[str, list[int]] | None:
    """{input_ids, attention_mask, labels} for prompt + response (+ eos_id): labels are -100 on every prompt
    position (and on padding), the token ids on the response and its eos, so the loss is taken only on the response.

    Truncation, when prompt + response + eos exceed max_length: the prompt loses tokens from its left (its end, next
    to the response, is the context that matters most), down to one token, which is kept so that the first response
    token is predicted from something; then the response loses tokens from its right (the eos first). A row left
    with no response token that is a target (the first position is never one: the model shifts) returns None, for
    the caller to report; `prompt_response_examples` does that for a list of rows.

    Args:
        max_length: the most tokens an example holds, at least 2.
        eos_id: appended to the response (and trained on) so that the model learns to stop.
        pad_id: pad on the right up to max_length (attention_mask 0, labels -100); None leaves the example
            unpadded for a collator that pads each batch to its longest row.
    """
    prompt = [int(i) for i in prompt_ids]
    target = [int(i) for i in response_ids] + ([eos_id] if eos_id is not None else [])
    keep_prompt, keep_target = kept_lengths(len(prompt), len(target), max_length)
    prompt, target = prompt[len(prompt) - keep_prompt:], target[:keep_target]
    input_ids = prompt + target
    labels = [IGNORE_INDEX] * len(prompt) + target
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    attention_mask = [1] * len(input_ids)
    if pad_id is not None:
        padding = max_length - len(input_ids)
        input_ids += [pad_id] * padding
        attention_mask += [0] * padding
        labels += [IGNORE_INDEX] * padding
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def kept_lengths(prompt: int, target: int, max_length: int) -> tuple[int, int]:
    """How many of a prompt's last tokens and of a target's (response + eos) first tokens an example of at most
    `max_length` tokens keeps: `prompt_response_example`'s truncation, as counts, so that another tokenisation of the
    same row can be cut the same way (the cross-tokenizer alignment of `tasks.causal_lm.example_items`)."""
    if max_length < 2:
        raise UserError(f"max_length must be at least 2 tokens (a prompt token and a response token), not {max_length}")
    if prompt + target <= max_length:
        return prompt, target
    keep = max(max_length - target, 1) if prompt else 0
    return keep, max_length - keep


class PromptResponseExamples(NamedTuple):
    examples: list[dict[str, list[int]]]
    skipped: list[int]  # positions of the rows left with no response token to train on
    truncated: int  # rows that were cut to max_length (the skipped ones included)


def prompt_response_examples(rows: Iterable[tuple[Sequence[int], Sequence[int]]], max_length: int,
                             eos_id: int | None = None, pad_id: int | None = None) -> PromptResponseExamples:
    """`prompt_response_example` for each (prompt_ids, response_ids) row, with the rows that lost every response
    token set aside by position (never trained on) and the count of rows that were truncated."""
    examples, skipped, truncated = [], [], 0
    extra = 1 if eos_id is not None else 0
    for position, (prompt_ids, response_ids) in enumerate(rows):
        truncated += len(prompt_ids) + len(response_ids) + extra > max_length
        example = prompt_response_example(prompt_ids, response_ids, max_length, eos_id, pad_id)
        if example is None:
            skipped.append(position)
        else:
            examples.append(example)
    return PromptResponseExamples(examples, skipped, truncated)


_JSON_TYPES = {dict: "an object", list: "an array", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def read_prompt_response_jsonl(path: str, prompt_key: str = "prompt",
                               response_key: str = "response") -> list[tuple[str, str]]:
    """(prompt, response) for each row of a JSON Lines file, in file order; blank lines are skipped.

    A row that is not a JSON object with a string under each key is a UserError naming the file and the line.
    """
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not a data file")
    if not os.path.isfile(path):
        raise UserError(f"data file not found: {path}{relative_path_hint(path)}")
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.rstrip("\r\n"))  # a column past the end, not "column 1" of a next line
                except json.JSONDecodeError as bad:
                    raise UserError(f"{path}: line {number}: not valid JSON ({bad.msg}, column {bad.colno})") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}: line {number}: a row must be a JSON object with {prompt_key!r} and "
                                    f"{response_key!r}, not {_JSON_TYPES.get(type(row), type(row).__name__)}")
                rows.append(tuple(_string_field(row, key, path, number) for key in (prompt_key, response_key)))
    except UnicodeDecodeError as err:
        raise decode_error(path, "utf-8", err, hint="save the file as UTF-8") from None
    if not rows:
        raise UserError(f"{path}: the file holds no rows")
    return rows


def _string_field(row: dict[str, Any], key: str, path: str, number: int) -> str:
    if key not in row:
        keys = ", ".join(repr(k) for k in row) or "none"
        raise UserError(f"{path}: line {number}: no {key!r} key (the row's keys: {keys})")
    value = row[key]
    if not isinstance(value, str):
        shown = json.dumps(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise UserError(f"{path}: line {number}: {key!r} is {_JSON_TYPES.get(type(value), type(value).__name__)} "
                        f"({shown}), not a string")
    return value


def align_by_offsets(teacher_offsets: Sequence[Sequence[int]], student_offsets: Sequence[Sequence[int]],
                     exact: bool = True) -> list[int]:
    """For each student token of a text, the position of the teacher token (in another tokenization of the same
    text) whose character span ends where the student token's does; -1 where none does.

    A causal LM's logits at position t are its distribution over what follows the text read so far, text[:end_t].
    Student position i and teacher position j with the same end have read the same text, so their two
    distributions, over two vocabularies, are about the same next text: the pairs a cross-tokenizer loss compares.
    ULD (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for
    LLMs") compares sorted distributions at paired positions; pairing them by index drifts as soon as one tokenizer
    splits a word the other keeps whole, pairing by end character does not. Approximate likelihood matching
    (Minixhofer et al. 2025) likewise compares the two models on chunks of text whose token boundaries coincide.

    Where several teacher tokens share an end (a byte-level BPE splits a multi-byte character into tokens that all
    span that character) the last one is taken: only after it has the teacher read the whole character.

    Args:
        teacher_offsets, student_offsets: (start, end) character spans as a transformers fast tokenizer returns
            them (`return_offsets_mapping=True`), in token order. A span with no characters (the (0, 0) of a
            special token a post-processor added) is never aligned. Offsets trimmed of whitespace (byte-level
            `trim_offsets=True`) still end in the right place but give pure-whitespace tokens empty spans, which
            are then left out; `train_bpe_tokenizer` does not trim.
        exact: False maps a student token with no teacher token ending with it to the last teacher token ending
            before it (a teacher that has read a prefix of the student's text), so that, say, every character of
            a character-level student under a BPE teacher has a teacher position; -1 only before the first one.
    """
    ends: list[int] = []  # distinct ends of the teacher's non-empty spans, increasing
    positions: list[int] = []  # the last teacher token with each end
    for position, (start, end) in enumerate(teacher_offsets):
        start, end = int(start), int(end)
        if end <= start:
            continue
        if ends and end < ends[-1]:
            raise ValueError(f"teacher offsets are not in text order: token {position} ends at {end}, before "
                             f"{ends[-1]}; align one text's tokens at a time")
        if ends and end == ends[-1]:
            positions[-1] = position
        else:
            ends.append(end)
            positions.append(position)
    aligned = []
    for start, end in student_offsets:
        start, end = int(start), int(end)
        k = bisect_right(ends, end) - 1 if end > start else -1
        aligned.append(positions[k] if k >= 0 and (not exact or ends[k] == end) else -1)
    return aligned


def _save_fast(tokenizer: Any, directory: str, unk: bool) -> "PreTrainedTokenizerFast":
    """`tokenizer` (a tokenizers.Tokenizer) as a transformers fast tokenizer with the eos/pad tokens, saved."""
    from transformers import PreTrainedTokenizerFast

    # clean_up_tokenization_spaces would turn " ." into "." on decode: this text is not BERT's.
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                   unk_token=UNK_TOKEN if unk else None, clean_up_tokenization_spaces=False)
    fast.save_pretrained(directory)
    return fast


def train_bpe_tokenizer(texts: Iterable[str] | str, vocab_size: int, directory: str,
                        min_frequency: int = 2) -> "PreTrainedTokenizerFast":
    """A byte-level BPE (GPT-2's scheme: Radford et al. 2019) trained on `texts` with the `tokenizers` library,
    saved in `directory` as a transformers fast tokenizer with eos and pad tokens; returned.

    Every byte is in the vocabulary, so any text encodes and decodes back to itself; no prefix space is added and
    offsets are not trimmed, so the spans tile the text (see `align_by_offsets`). Train it on the train split only.

    Args:
        vocab_size: including the 256 bytes and the 2 special tokens.
        min_frequency: the fewest occurrences for a pair to be merged.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 2:
        raise UserError(f"vocab_size {vocab_size} is too small for a byte-level BPE: it needs the {len(alphabet)} "
                        f"bytes and 2 special tokens ({len(alphabet) + 2}) before any merge")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=[EOS_TOKEN, PAD_TOKEN], initial_alphabet=alphabet)
    tokenizer.train_from_iterator([texts] if isinstance(texts, str) else texts, trainer)
    return _save_fast(tokenizer, directory, unk=False)


def char_tokenizer(texts: Iterable[str] | str, directory: str) -> "PreTrainedTokenizerFast":
    """A character-level tokenizer over the characters of `texts` (ids: eos, pad, unk, then the characters in
    code-point order), saved in `directory` as a transformers fast tokenizer; returned.

    One token per character, offsets (i, i + 1); a character not in `texts` encodes as the unk token, so decode
    gives the text back only for characters it has seen (every one of tiny Shakespeare's 65 is in its train split).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    characters = sorted(set().union(*map(set, [texts] if isinstance(texts, str) else texts)))
    tokens = [EOS_TOKEN, PAD_TOKEN, UNK_TOKEN] + characters
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # Every character a word of its own ([\s\S]: any character, newlines included), looked up whole.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # join the characters back with nothing between them
    return _save_fast(tokenizer, directory, unk=True)


def loss_per_character(mean_token_loss_nats: float, tokens: int, characters: int) -> float:
    """Nats per character: mean_token_loss_nats * tokens / characters, the total loss spread over the text.

    A per-token loss depends on how much text a token holds, so only this compares models with different
    tokenizers, scored on the same text. `tokens` is the count the mean was taken over (the predicted ones) and
    `characters` the length of the text those tokens spell. Divide by ln 2 for bits per character.
    """
    if characters <= 0:
        raise ValueError(f"characters must be positive, not {characters}")
    if tokens < 0:
        raise ValueError(f"tokens must not be negative, not {tokens}")
    if not math.isfinite(mean_token_loss_nats):
        raise ValueError(f"the mean token loss is {mean_token_loss_nats}, not a finite number")
    return mean_token_loss_nats * tokens / characters
