"""Causal-LM data transforms (kdistill.lm_data): the split, packed blocks, prompt/response examples and their JSONL
reader, character-offset alignment, the two tokenizers and loss per character."""

import json
import math

import pytest
from transformers import PreTrainedTokenizerFast

from kdistill.errors import UserError
from kdistill.lm_data import (
    IGNORE_INDEX, align_by_offsets, char_tokenizer, loss_per_character, pack_blocks, prompt_response_example,
    prompt_response_examples, read_prompt_response_jsonl, split_text, train_bpe_tokenizer,
)

from conftest import SHARED

SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
X = IGNORE_INDEX


@pytest.fixture(scope="module")
def shakespeare_lines() -> list[str]:
    return SHAKESPEARE.read_text(encoding="utf-8").splitlines(keepends=True)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, shakespeare_lines) -> tuple[PreTrainedTokenizerFast, PreTrainedTokenizerFast]:
    """(byte-level BPE, character-level), both trained on the play's first 200 lines."""
    root = tmp_path_factory.mktemp("lm_tokenizers")
    train = shakespeare_lines[:200]
    return train_bpe_tokenizer(train, 320, str(root / "bpe")), char_tokenizer(train, str(root / "char"))


# split_text

def test_split_text_gives_the_first_90_percent_of_the_characters_to_train():
    assert split_text("0123456789") == ("012345678", "9")
    assert split_text("0123456789a") == ("012345678", "9a")  # int(9.9) = 9
    assert split_text("0123456789", train_fraction=0.5) == ("01234", "56789")


def test_split_text_of_tiny_shakespeare_is_nanogpts():
    text = SHAKESPEARE.read_text(encoding="utf-8")
    train, validation = split_text(text)
    assert (len(train), len(validation)) == (1_003_854, 111_540)  # int(1,115,394 * 0.9)
    assert train + validation == text


@pytest.mark.parametrize("fraction", [0, 1, 1.5])
def test_split_text_rejects_a_fraction_outside_0_1(fraction):
    with pytest.raises(UserError, match=rf"^train_fraction must be between 0 and 1 \(exclusive\), not {fraction}$"):
        split_text("abc", fraction)


# pack_blocks

def test_pack_blocks_joins_documents_with_eos_and_drops_the_short_tail():
    packed = pack_blocks([[1, 2, 3], [4, 5], [], [6, 7, 8, 9]], block_size=3, eos_id=0)
    # stream 1 2 3 0 4 5 0 6 7 | 8 9: the empty document adds no second eos
    assert packed.blocks == [[1, 2, 3], [0, 4, 5], [0, 6, 7]]
    assert packed.dropped == 2


def test_pack_blocks_without_eos_concatenates_and_loses_nothing_on_an_exact_fit():
    packed = pack_blocks([[1, 2, 3, 4], [5, 6, 7, 8, 9]], block_size=3)
    assert packed.blocks == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert packed.dropped == 0


def test_pack_blocks_keeps_every_token_but_the_tail(tokenizers, shakespeare_lines):
    bpe, _ = tokenizers
    documents = [bpe(line)["input_ids"] for line in shakespeare_lines[200:260] if line.strip()]
    packed = pack_blocks(documents, block_size=16, eos_id=bpe.eos_token_id)
    stream = []
    for ids in documents:
        stream += ([bpe.eos_token_id] if stream else []) + ids
    assert len(packed.blocks) == len(stream) // 16
    assert all(len(block) == 16 for block in packed.blocks)
    assert packed.dropped == len(stream) % 16
    assert sum(packed.blocks, []) == stream[:len(stream) - packed.dropped]


def test_pack_blocks_rejects_a_block_with_no_prediction():
    with pytest.raises(UserError, match=r"^block_size must be at least 2 tokens \(a block of n tokens gives n - 1 "
                                        r"predictions\), not 1$"):
        pack_blocks([[1, 2]], block_size=1)


# prompt_response_example

def test_prompt_response_example_masks_the_prompt_and_the_padding():
    example = prompt_response_example([5, 6, 7], [8, 9], max_length=8, eos_id=2, pad_id=0)
    assert example == {
        "input_ids": [5, 6, 7, 8, 9, 2, 0, 0],
        "attention_mask": [1, 1, 1, 1, 1, 1, 0, 0],
        "labels": [X, X, X, 8, 9, 2, X, X],
    }


def test_prompt_response_example_without_padding_is_as_long_as_its_tokens():
    assert prompt_response_example([5, 6], [8], max_length=8) == {
        "input_ids": [5, 6, 8], "attention_mask": [1, 1, 1], "labels": [X, X, 8]}


def test_a_long_prompt_loses_its_left_end_first():
    example = prompt_response_example([1, 2, 3, 4, 5], [6, 7], max_length=5, eos_id=9)
    assert example == {"input_ids": [4, 5, 6, 7, 9], "attention_mask": [1] * 5, "labels": [X, X, 6, 7, 9]}


def test_a_long_response_keeps_one_prompt_token_and_loses_its_right_end():
    example = prompt_response_example([1, 2, 3], [4, 5, 6, 7, 8], max_length=4, eos_id=9)
    # the last prompt token stays: it is where the first response token is predicted from
    assert example == {"input_ids": [3, 4, 5, 6], "attention_mask": [1] * 4, "labels": [X, 4, 5, 6]}


def test_with_no_prompt_the_first_response_token_is_no_target():
    assert prompt_response_example([], [4, 5], max_length=4)["labels"] == [4, 5]  # the model scores only the 5
    assert prompt_response_example([], [4], max_length=4) is None
    assert prompt_response_example([1, 2], [], max_length=4) is None
    assert prompt_response_example([1, 2], [], max_length=4, eos_id=9)["labels"] == [X, X, 9]


def test_prompt_response_examples_report_rows_with_nothing_to_train_on():
    rows = [([1, 2], [3]), ([1], []), ([1, 2, 3, 4, 5], [6, 7]), ([], [8])]
    result = prompt_response_examples(rows, max_length=4, pad_id=0)
    assert result.skipped == [1, 3]
    assert result.truncated == 1
    assert [e["labels"] for e in result.examples] == [[X, X, 3, X], [X, X, 6, 7]]


def test_prompt_response_example_rejects_max_length_1():
    with pytest.raises(UserError, match=r"^max_length must be at least 2 tokens \(a prompt token and a response "
                                        r"token\), not 1$"):
        prompt_response_example([1], [2], max_length=1)


# read_prompt_response_jsonl

def test_read_prompt_response_jsonl_reads_rows_in_order_and_skips_blank_lines(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text('{"q": "Who art thou?", "a": "A citizen.", "id": 3}\n\n{"q": "Speak.", "a": "Ay, my lord."}\n',
                    encoding="utf-8")
    assert read_prompt_response_jsonl(str(path), prompt_key="q", response_key="a") == [
        ("Who art thou?", "A citizen."), ("Speak.", "Ay, my lord.")]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", "response": ', "line 2: not valid JSON (Expecting value, column 29)"),
    ('["a", "b"]', "line 2: a row must be a JSON object with 'prompt' and 'response', not an array"),
    ('{"prompt": "a", "answer": "b"}', "line 2: no 'response' key (the row's keys: 'prompt', 'answer')"),
    ('{"prompt": 7, "response": "b"}', "line 2: 'prompt' is a number (7), not a string"),
    ('{"prompt": "a", "response": null}', "line 2: 'response' is null (null), not a string"),
])
def test_read_prompt_response_jsonl_names_the_file_and_line_of_a_bad_row(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "fine", "response": "row"}) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(UserError) as caught:
        read_prompt_response_jsonl(str(path))
    assert str(caught.value) == f"{path}: {message}"


def test_read_prompt_response_jsonl_missing_empty_and_undecodable_files(tmp_path):
    with pytest.raises(UserError, match=rf"^data file not found: {tmp_path}/none.jsonl$"):
        read_prompt_response_jsonl(str(tmp_path / "none.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"empty.jsonl: the file holds no rows$"):
        read_prompt_response_jsonl(str(tmp_path / "empty.jsonl"))
    (tmp_path / "latin.jsonl").write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"latin.jsonl: not valid utf-8 text \(line 2, byte 48: invalid continuation "
                                        r"byte\); save the file as UTF-8$"):
        read_prompt_response_jsonl(str(tmp_path / "latin.jsonl"))


# align_by_offsets

TO_BE_OR = [(0, 2), (2, 5), (5, 8)]  # "to", " be", " or" of "to be or"
CHARS_8 = [(i, i + 1) for i in range(8)]


def test_align_by_offsets_pairs_tokens_that_end_at_the_same_character():
    assert align_by_offsets(TO_BE_OR, CHARS_8) == [-1, 0, -1, -1, 1, -1, -1, 2]
    assert align_by_offsets(CHARS_8, TO_BE_OR) == [1, 4, 7]


def test_align_by_offsets_inexact_takes_the_last_teacher_token_ending_before():
    assert align_by_offsets(TO_BE_OR, CHARS_8, exact=False) == [-1, 0, 0, 0, 1, 1, 1, 2]


def test_align_by_offsets_skips_special_tokens_and_takes_the_last_byte_of_a_character():
    teacher = [(0, 0), (0, 1), (1, 2), (1, 2), (0, 0)]  # bos, "a", "é" as two bytes, eos
    student = [(0, 0), (0, 2), (0, 0)]  # bos, "aé", eos
    assert align_by_offsets(teacher, student) == [-1, 3, -1]
    assert align_by_offsets(teacher, student, exact=False) == [-1, 3, -1]


def test_align_by_offsets_rejects_teacher_offsets_out_of_order():
    with pytest.raises(ValueError, match="teacher offsets are not in text order: token 1 ends at 2, before 5"):
        align_by_offsets([(0, 5), (0, 2)], [(0, 5)])


def test_align_a_char_student_with_a_bpe_teacher_by_hand(tokenizers):
    bpe, char = tokenizers
    text = "First Citizen:"
    teacher = bpe(text, return_offsets_mapping=True)
    student = char(text, return_offsets_mapping=True)
    assert bpe.convert_ids_to_tokens(teacher["input_ids"]) == ["First", "ĠCitizen", ":"]
    assert teacher["offset_mapping"] == [(0, 5), (5, 13), (13, 14)]
    assert student["offset_mapping"] == [(i, i + 1) for i in range(14)]
    t, s = teacher["offset_mapping"], student["offset_mapping"]
    #                                  F   i   r   s  t   _   C   i   t   i   z   e  n  :
    assert align_by_offsets(t, s) == [-1, -1, -1, -1, 0, -1, -1, -1, -1, -1, -1, -1, 1, 2]
    assert align_by_offsets(t, s, exact=False) == [-1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]
    assert align_by_offsets(s, t) == [4, 12, 13]


def test_every_aligned_pair_ends_at_the_same_character(tokenizers, shakespeare_lines):
    bpe, char = tokenizers
    text = "".join(shakespeare_lines[300:310]) + "Caf\u00e9 au lait, my lord."  # unseen text, one 2-byte character
    teacher = bpe(text, return_offsets_mapping=True)["offset_mapping"]
    student = char(text, return_offsets_mapping=True)["offset_mapping"]
    assert student == [(i, i + 1) for i in range(len(text))]
    aligned = align_by_offsets(teacher, student)
    pairs = [(i, j) for i, j in enumerate(aligned) if j >= 0]
    assert all(student[i][1] == teacher[j][1] for i, j in pairs)
    # every distinct teacher end has its character, and the é's two byte tokens share one end: the second is taken
    assert len(pairs) == len({end for _, end in teacher})
    e_acute = text.index("\u00e9")
    assert [j for j, span in enumerate(teacher) if span == (e_acute, e_acute + 1)][-1] == aligned[e_acute]
    inexact = align_by_offsets(teacher, student, exact=False)
    first = next(i for i, j in enumerate(inexact) if j >= 0)
    assert all(j >= 0 and teacher[j][1] <= student[i][1] for i, j in enumerate(inexact) if i >= first)
    assert inexact == sorted(inexact)


# the tokenizers

def test_bpe_offsets_tile_the_text_and_decode_round_trips(tokenizers, shakespeare_lines):
    bpe, _ = tokenizers
    text = "".join(shakespeare_lines[1000:1012]) + "Caf\u00e9 \u2014 na\u00efve\n"
    encoded = bpe(text, return_offsets_mapping=True)
    assert bpe.decode(encoded["input_ids"]) == text
    spans = encoded["offset_mapping"]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    # each token starts where the previous ended, or shares its character (the bytes of one character)
    assert all(b[0] == a[1] or b == a for a, b in zip(spans, spans[1:]))
    assert len(bpe) == 320
    assert (bpe.eos_token, bpe.eos_token_id, bpe.pad_token, bpe.pad_token_id) == ("<|endoftext|>", 0, "<|pad|>", 1)


def test_char_tokenizer_round_trips_seen_characters(tokenizers, shakespeare_lines):
    _, char = tokenizers
    text = "".join(shakespeare_lines[204:216])
    assert set(text) <= set("".join(shakespeare_lines[:200]))  # otherwise unk would be expected
    encoded = char(text, return_offsets_mapping=True)
    assert len(encoded["input_ids"]) == len(text)
    assert encoded["offset_mapping"] == [(i, i + 1) for i in range(len(text))]
    assert char.decode(encoded["input_ids"]) == text
    assert (char.eos_token_id, char.pad_token_id, char.unk_token_id) == (0, 1, 2)
    assert char.convert_ids_to_tokens([3, 4]) == ["\n", " "]  # then the characters in code-point order
    assert char("q\u00e9a")["input_ids"] == [2, 2, char.convert_tokens_to_ids("a")]  # 'q' is not in lines 1-200


def test_saved_tokenizers_load_back_the_same(tokenizers, tmp_path_factory):
    for tokenizer in tokenizers:
        directory = tmp_path_factory.mktemp("saved")
        tokenizer.save_pretrained(str(directory))
        loaded = PreTrainedTokenizerFast.from_pretrained(str(directory))
        text = "What say you, Menenius?\n"
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"]) == text
        assert (loaded.eos_token, loaded.pad_token) == ("<|endoftext|>", "<|pad|>")


def test_train_bpe_tokenizer_rejects_a_vocabulary_below_the_bytes(tmp_path):
    with pytest.raises(UserError, match=r"^vocab_size 100 is too small for a byte-level BPE: it needs the 256 bytes "
                                        r"and 2 special tokens \(258\) before any merge$"):
        train_bpe_tokenizer(["abc"], 100, str(tmp_path))


# loss_per_character

def test_loss_per_character_spreads_the_total_loss_over_the_text():
    # a BPE model: 100 tokens for 400 characters at 2.0 nats a token; a char model: 400 tokens at 0.6
    assert loss_per_character(2.0, 100, 400) == 0.5
    assert loss_per_character(0.6, 400, 400) == pytest.approx(0.6)
    assert loss_per_character(2.0, 100, 400) / math.log(2) == pytest.approx(0.7213475, abs=1e-6)  # bits/char
    with pytest.raises(ValueError, match="^characters must be positive, not 0$"):
        loss_per_character(2.0, 100, 0)
