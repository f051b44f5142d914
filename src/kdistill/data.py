"""Loading labelled and unlabelled text, one stable label map, and tokenisation (batches are the task's:
`kdistill.tasks`).

Rows keep their position in the file as their identity (`idx`): the soft-label cache is indexed by it, so a
student may tokenise the text however it likes and still find its teacher's logits.
"""

import contextlib
import csv
import logging
import os
from collections.abc import Iterator
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from transformers import PreTrainedTokenizerBase

from . import conll
from .config import DataConfig, UserError
from .files import LABELS_FILE, decode_error, relative_path_hint, update_json  # noqa: F401 - LABELS_FILE is read from here too

logger = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "conll",
           ".conll": "conll"}
# Truncation messages already logged in this process (a split is tokenised by the teacher pass, the student and
# evaluation: the user needs to read the count once).
_TRUNCATION_REPORTED: set[tuple[str, int, int, int]] = set()


def _has_rows(path: str, header: bool) -> bool:
    """Whether a csv/tsv file holds a non-blank line beyond its header (reads only until it finds one)."""
    needed, seen = (2 if header else 1), 0
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                seen += 1
                if seen >= needed:
                    return True
    return False


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence datasets' own ERROR line for a file it cannot parse (the UserError raised instead says it once) and
    its 'Generating data split' bar (a second, half-finished line above that error; library code does not print)."""
    quiet = logging.getLogger("datasets")
    level, bars = quiet.level, datasets.is_progress_bar_enabled()
    quiet.setLevel(logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        quiet.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


# Tables read in this process, by file identity and the options that shape them: one `kdistill run` (teach, the
# soft-label pass, distill, eval) reads and checks each file once. Tables are memory-mapped, so keeping them is cheap.
_TABLES: dict[tuple, datasets.Dataset] = {}


def load_table(path: str, data: DataConfig, labelled: bool = True) -> datasets.Dataset:
    """Read one data file into a Dataset holding the text column(s) and, if `labelled`, the label column.

    Raises UserError for a missing, empty or undecodable file, an unknown format, a missing column, an empty
    text or a missing label.
    """
    try:
        st = os.stat(path)
    except OSError:
        st = None
    key = None
    if st is not None:
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino, labelled, data.task, data.text_column,
               data.text_pair_column, data.label_column, tuple(data.column_names or ()), data.encoding)
        if key in _TABLES:
            return _TABLES[key]
    table = _read_table(path, data, labelled)
    if key is not None:
        _TABLES[key] = table
    return table


def _check_path(path: str, data: DataConfig) -> str:
    """A data file that is there, a file, of a known format, not empty and (csv/tsv) with a row; returns its
    extension."""
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not a data file")
    if not os.path.isfile(path):
        raise UserError(f"data file not found: {path}{relative_path_hint(path)}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise UserError(f"{path}: unknown data format {ext!r}; use one of {', '.join(FORMATS)}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: the file is empty")
    if ext in (".csv", ".tsv") and not _has_rows(path, header=not data.column_names):
        # datasets would fail with 'Instruction "data" corresponds to no data!' on a header-only file.
        raise UserError(f"{path}: the file holds no rows" + ("" if data.column_names else " below its header"))
    return ext


def _csv_options(ext: str, data: DataConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if ext == ".tsv":
        # SST-2 and AG News hold bare quote characters; QUOTE_NONE keeps them as text.
        kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    if ext in (".csv", ".tsv", ".json", ".jsonl"):
        kwargs["encoding"] = data.encoding
    if ext in (".csv", ".tsv") and data.column_names:
        kwargs.update(column_names=list(data.column_names), header=None)
    return kwargs


def _columns(data: DataConfig, labelled: bool) -> list[str]:
    """The columns a split reads: the text (and pair) column, and the label column of a labelled one."""
    return [data.text_column, *([data.text_pair_column] if data.text_pair_column else []),
            *([data.label_column] if labelled else [])]


def _not_scalar(kind: pa.DataType | None) -> str | None:
    """What a column of Arrow type `kind` holds if it is not one value per row ('lists', 'structs', ...), else None."""
    if kind is None:
        return None
    if pa.types.is_dictionary(kind):
        return _not_scalar(kind.value_type)
    for test, what in ((pa.types.is_list, "lists"), (pa.types.is_large_list, "lists"),
                       (pa.types.is_fixed_size_list, "lists"), (pa.types.is_struct, "structs"),
                       (pa.types.is_map, "mappings"), (pa.types.is_binary, "bytes"),
                       (pa.types.is_large_binary, "bytes"), (pa.types.is_nested, "nested values")):
        if test(kind):
            return what
    return None


def check_columns(path: str, types: dict[str, pa.DataType | None], data: DataConfig, labelled: bool) -> None:
    """The columns a split reads are among `types` (a file's columns and their Arrow types, None where not yet
    known) and hold one value per row: a list, a struct or bytes would become a text like "['a', 'b']"."""
    for column in _columns(data, labelled):
        if column not in types:
            raise UserError(
                f"{path}: no column {column!r} (columns: {', '.join(types)}); "
                "set text_column / label_column, or column_names for a file without a header"
            )
    if word_rows(data):
        for column in _columns(data, labelled):
            if types[column] is not None and _not_scalar(types[column]) != "lists":
                raise UserError(f"{path}: column {column!r} holds {types[column]}, but the {data.task} task reads a "
                                "list per row (the sentence's words, or their tags)")
        return
    for column in _columns(data, labelled):
        what = _not_scalar(types[column])
        if what:
            role = "label" if labelled and column == data.label_column else "text"
            need = "a string, an integer or a boolean" if role == "label" else "a string"
            raise UserError(f"{path}: column {column!r} holds {what} ({types[column]}), but each row's {role} must "
                            f"be {need}; flatten the column or point {role}_column at another")


def _first_row_types(path: str, encoding: str) -> dict[str, pa.DataType | None] | None:
    """The keys of a JSON Lines file's first row and the Arrow types of its values; None if the file is not JSON
    Lines (a JSON array, a pretty-printed object): only datasets' full read tells its columns."""
    import json

    with open(path, encoding=encoding) as fh:
        line = ""
        while not line.strip():
            line = fh.readline(1 << 20)
            if not line:
                return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(row, dict):
        return None
    types: dict[str, pa.DataType | None] = {}
    for key, value in row.items():
        try:
            types[str(key)] = None if value is None else pa.array([value]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            types[str(key)] = None
    return types


def _peek_columns(path: str, ext: str, data: DataConfig) -> dict[str, pa.DataType | None] | None:
    """A data file's columns (and their types where the file says) from its schema, header or first row; None when
    only a full read can tell."""
    kwargs = _csv_options(ext, data)
    try:
        if ext == ".parquet":
            import pyarrow.parquet as pq

            return {f.name: f.type for f in pq.read_schema(path)}
        if ext in (".csv", ".tsv"):
            if data.column_names:
                return dict.fromkeys(data.column_names)
            import pandas as pd

            # What datasets' csv reader (pandas) makes of the header: the same names, a BOM dropped, repeats renamed.
            header = pd.read_csv(path, sep=kwargs.get("delimiter", ","), encoding=data.encoding, nrows=0,
                                 quoting=kwargs.get("quoting", csv.QUOTE_MINIMAL))
            return dict.fromkeys(str(c) for c in header.columns)  # csv values are scalars: no types to check
        return _first_row_types(path, data.encoding)
    except UnicodeDecodeError as err:
        raise decode_error(path, data.encoding, err) from None
    except OSError:
        raise
    except Exception:  # noqa: BLE001 - a file its reader cannot parse: the full read says why, in one line
        return None


def check_file(path: str, data: DataConfig, labelled: bool = True) -> None:
    """What can be told of a data file without reading it whole, before any model loads: it is there, a file of a
    known format, not empty, and the columns a split reads are in it, one value per row (see check_columns)."""
    from .tasks import get_task

    ext = _check_path(path, data)
    if FORMATS[ext] == "conll" or ext in get_task(data.task).own_formats:
        load_table(path, data, labelled)  # read whole (and remembered): its errors name a line, found only so
        return
    columns = _peek_columns(path, ext, data)
    if columns is not None:
        check_columns(path, columns, data, labelled)


def word_rows(data: DataConfig) -> bool:
    """Whether the task's rows are sentences of words with a tag each (a list per row), not one text and label."""
    from .tasks import get_task

    return get_task(data.task).item == "word"


def _read_words(path: str, ext: str, data: DataConfig, labelled: bool) -> datasets.Dataset:
    """A word-tagged split: the text column holds each sentence's words, the label column their IOB2 tags."""
    tags = data.label_column if labelled else None
    if FORMATS[ext] == "conll":
        return datasets.Dataset.from_dict(conll.read_conll(path, data.text_column, tags, data.column_names,
                                                           data.encoding))
    table = _read_table(path, data, labelled, words=True)
    columns = {data.text_column: table[data.text_column][:]}
    if tags is not None:
        columns[tags] = table[tags][:]
    conll.check_rows(columns[data.text_column], columns.get(tags), path)
    if tags is not None:
        columns[tags] = conll.convert_iob1(columns[tags], path)
    return datasets.Dataset.from_dict(columns)


def _read_table(path: str, data: DataConfig, labelled: bool, words: bool | None = None) -> datasets.Dataset:
    from .tasks import get_task

    ext = _check_path(path, data)
    own = get_task(data.task).read_file(path, data, labelled)  # a task's own format (causal_lm: plain text)
    if own is not None:
        return own
    if words is None and word_rows(data):
        return _read_words(path, ext, data, labelled)
    if FORMATS[ext] == "conll":
        raise UserError(f"{path}: a CoNLL file ({ext}) holds tagged words; it is data for the token_classification "
                        f"task, not {data.task}")
    try:
        with _quiet_datasets():
            table = datasets.load_dataset(FORMATS[ext], data_files={"data": path}, split="data",
                                          **_csv_options(ext, data))
    except UnicodeDecodeError as err:
        raise decode_error(path, data.encoding, err) from None
    except Exception as err:  # datasets wraps parser errors in many types; the user needs the first line only
        cause = err.__cause__ or err
        if isinstance(cause, UnicodeDecodeError):
            raise decode_error(path, data.encoding, cause) from None
        if isinstance(cause, OSError) and cause.errno is not None:
            raise cause from None  # unreadable, or a full disk under datasets' cache: the CLI names the path and why
        raise UserError(f"{path}: could not be read as {FORMATS[ext]}: {str(cause).splitlines()[0]}") from None
    if len(table) == 0:
        raise UserError(f"{path}: the file holds no rows")
    check_columns(path, {f.name: f.type for f in table.data.schema}, data, labelled)
    table = table.select_columns(_columns(data, labelled))
    if words:
        return table  # _read_words checks each sentence
    # Counted by Arrow on the memory-mapped table: no Python object per row, so a file larger than memory is checked.
    empty = _count_blank(table, data.text_column)
    if empty:
        raise UserError(f"{path}: {empty} row(s) have an empty {data.text_column!r}; remove them or fix the file")
    if labelled:
        missing = table.data.column(data.label_column).null_count
        if missing:
            raise UserError(f"{path}: {missing} row(s) have no {data.label_column!r}; remove them or fix the file")
    return table


def _count_blank(table: datasets.Dataset, column: str) -> int:
    """Rows whose `column` is missing or only whitespace."""
    values = table.data.column(column)
    blank = values.null_count
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        blank += int(pc.sum(pc.equal(pc.utf8_trim_whitespace(values), "")).as_py() or 0)
    return blank


def split_file(data: DataConfig, split: str) -> str | None:
    """The file a split ('train', 'transfer', 'validation', 'test') is read from; test falls back to validation,
    and validation to train_file's end under train_fraction (`split_part`)."""
    validation = data.validation_file or (data.train_file if data.train_fraction is not None else None)
    return {"train": data.train_file, "transfer": data.transfer_file, "validation": validation,
            "test": data.test_file or validation}[split]


def split_part(data: DataConfig, split: str) -> str | None:
    """'train' or 'validation' where a split reads only that part of train_file (train_fraction: its first
    characters, or the rest); None where it reads its file whole."""
    if data.train_fraction is None or split == "transfer" or (split == "test" and data.test_file is not None):
        return None
    return "train" if split == "train" else "validation"


def _text_part(table: datasets.Dataset, data: DataConfig, part: str) -> datasets.Dataset:
    """A text table's (causal_lm: the file's lines) first train_fraction of characters, or the rest, as lines:
    `lm_data.split_text` on the file's text, so the cut may fall inside a line and every tokenizer sees one text."""
    from .lm_data import split_text

    head, tail = split_text("".join(table[data.text_column][:]), data.train_fraction)
    text = head if part == "train" else tail
    if not text.strip():
        raise UserError(f"{data.train_file}: its {part} part under train_fraction {data.train_fraction} holds no text")
    return datasets.Dataset.from_dict({data.text_column: text.splitlines(keepends=True)})


def validation_is_test(data: DataConfig) -> bool:
    """Whether the validation file and the test file are one file (the same path, or the same bytes)."""
    a, b = data.validation_file, data.test_file
    if not a or not b or not (os.path.isfile(a) and os.path.isfile(b)):
        return False
    if os.path.samefile(a, b):
        return True
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return all(x == y for x, y in zip(iter(lambda: fa.read(1 << 20), b""), iter(lambda: fb.read(1 << 20), b"")))


# Pairs of (validation, test) files already looked at by warn_if_validation_is_test: a run asks at every step that
# builds the label map, and comparing two files of one size reads both.
_VALIDATION_IS_TEST_SEEN: set[tuple] = set()


def warn_if_validation_is_test(data: DataConfig) -> None:
    """Once per process and pair of files: choosing on validation would be choosing on the test set."""
    key = (data.validation_file, data.test_file)
    if key in _VALIDATION_IS_TEST_SEEN:
        return
    _VALIDATION_IS_TEST_SEEN.add(key)
    if validation_is_test(data):
        logger.warning("validation_file and test_file are the same data (%s): whatever is chosen on validation "
                       "(early stopping, a sweep's best setting) is chosen on the test set, and test figures are "
                       "optimistic; give a validation file of its own", data.test_file)


def split_limit(data: DataConfig, split: str) -> int | None:
    """How many of a split's first rows are used (None: all)."""
    return {"train": data.max_train_samples, "transfer": data.max_transfer_samples}.get(split, data.max_eval_samples)


# The parts of tables load_table remembers (by the table's identity: _TABLES keeps it alive), cut once per process.
_PARTS: dict[tuple, datasets.Dataset] = {}


def load_split(data: DataConfig, split: str) -> datasets.Dataset | None:
    """The named split ('train', 'validation', 'test', 'transfer') from files or the hub; None if not configured."""
    path = split_file(data, split)
    limit = split_limit(data, split)
    if path is not None:
        table = load_table(path, data, labelled=split != "transfer")
        part = split_part(data, split)
        if part is not None:
            key = (id(table), part, data.train_fraction)
            if key not in _PARTS:
                _PARTS[key] = _text_part(table, data, part)
            table = _PARTS[key]
    elif data.dataset_name is not None and split != "transfer":
        # Hub data sets (for users who are online); GLUE's test labels are hidden, so 'test' falls back to validation.
        hub = datasets.load_dataset(data.dataset_name, data.dataset_config_name)
        name = split if split in hub and not (split == "test" and min(hub[split][data.label_column]) < 0) else "validation"
        if name not in hub:
            return None
        table = hub[name]
    else:
        return None
    if limit is not None:
        table = table.select(sample_rows(len(table), limit, data.train_sample_seed if split == "train" else None))
    return table


def sample_rows(rows: int, limit: int, seed: int | None = None) -> list[int] | range:
    """The rows a split keeps: its first `limit`, or with `seed` that many drawn at random, in file order (a row's
    position stays its identity, so the soft-label cache and the student see the same rows in the same order)."""
    if seed is None or limit >= rows:
        return range(min(limit, rows))
    import random

    return sorted(random.Random(seed).sample(range(rows), limit))


def _label_key(value: Any, source: str = "data") -> str:
    # A float column whose values are whole numbers (1.0, 0.0: what pandas makes of an integer column with a gap,
    # or what a JSON writer may emit) is read as integers; a fraction is a regression target, not a class.
    if isinstance(value, float):
        if not value.is_integer():
            raise UserError(f"{source}: label {value!r} is a fraction; labels must be integers or strings")
        value = int(value)
    return str(value)


def _is_int(key: str) -> bool:
    return key.lstrip("-").isdigit()


def build_label_map(labels: list[Any], source: str = "the training data") -> dict[str, int]:
    """One stable label -> id map: integer labels keep their order, strings are sorted.

    Raises UserError for fractional labels, for integers mixed with strings (a csv file reads both as text, so
    `1` next to `neg` is caught here too) and for fewer than 2 classes.
    """
    keys = sorted({_label_key(v, source) for v in labels[:]})  # [:]: a datasets Column in one conversion
    ints = [k for k in keys if _is_int(k)]
    if ints and len(ints) < len(keys):
        strings = [k for k in keys if not _is_int(k)]
        raise UserError(
            f"{source}: the labels mix integers ({', '.join(ints[:3])}) and strings "
            f"({', '.join(map(repr, strings[:3]))}); use one kind for every row"
        )
    if ints:
        keys = sorted(keys, key=int)
    if len(keys) < 2:
        raise UserError(f"{source} holds {len(keys)} distinct label(s); a classifier needs at least 2")
    return {k: i for i, k in enumerate(keys)}


def save_label_map(label2id: dict[str, int], directory: str) -> None:
    """DIRECTORY/labels.json, written (atomically) only when it does not already hold this map."""
    update_json(os.path.join(directory, LABELS_FILE), label2id)


def encode_labels(table: datasets.Dataset, data: DataConfig, label2id: dict[str, int], source: str) -> list[int]:
    values = [_label_key(v, source) for v in table[data.label_column][:]]
    unknown = sorted(set(values) - set(label2id))
    if unknown:
        raise UserError(
            f"{source}: label(s) {', '.join(map(repr, unknown[:5]))} are not among the model's labels "
            f"({', '.join(label2id)})"
        )
    return [label2id[v] for v in values]


def tokenize(
    table: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    data: DataConfig,
    labels: list[int] | None,
    index_offset: int = 0,
    source: str = "data",
    who: str = "tokenizer",
) -> datasets.Dataset:
    """Tokenise without padding (the collator pads each batch to its longest row).

    Adds `idx` (the row's position, plus `index_offset`, used to find its soft labels), `length` (for
    length-grouped batches) and `labels` (-100 for unlabelled rows). How many texts were truncated is logged once
    per `source` and count, however often the split is tokenised (teacher pass, student, evaluation); `who`
    (e.g. "student tokenizer") tells two tokenizers' counts apart.
    """
    texts = [str(t) for t in table[data.text_column][:]]
    pairs = [str(t) for t in table[data.text_pair_column][:]] if data.text_pair_column else None
    max_length = _max_length(tokenizer, data)
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    _report_truncation(source, sum(1 for ids in enc["input_ids"] if len(ids) >= max_length), len(texts), max_length, who)
    columns = {k: list(v) for k, v in enc.items()}
    columns["idx"] = list(range(index_offset, index_offset + len(texts)))
    columns["length"] = [len(ids) for ids in enc["input_ids"]]
    columns["labels"] = labels if labels is not None else [-100] * len(texts)
    return datasets.Dataset.from_dict(columns)


def _max_length(tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> int:
    return min(data.max_length, getattr(tokenizer, "model_max_length", data.max_length) or data.max_length)


def _report_truncation(source: str, truncated: int, total: int, max_length: int, who: str) -> None:
    # Texts exactly max_length tokens long count too: telling them apart would cost a second, untruncated pass.
    key = (source, truncated, total, max_length)
    if truncated and key not in _TRUNCATION_REPORTED:
        _TRUNCATION_REPORTED.add(key)
        logger.info("%s: %d of %d texts reached max_length=%d tokens (%s) and were truncated",
                    source, truncated, total, max_length, who)


def encode_chunks(
    table: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    data: DataConfig,
    chunk_rows: int = 10_000,
    source: str = "data",
    who: str = "tokenizer",
) -> Iterator[list[dict[str, list[int]]]]:
    """The model inputs of `table`'s rows, in order, tokenised `chunk_rows` at a time: what the teacher pass needs,
    in memory one chunk at a time (the table itself is memory-mapped), so a transfer set need not fit in memory.

    Yields lists of unpadded rows ({input_ids, attention_mask, ...}); the truncation count is logged once, at the end.
    """
    max_length = _max_length(tokenizer, data)
    truncated = 0
    for start in range(0, len(table), chunk_rows):
        part = table[start : start + chunk_rows]  # a dict of column lists for these rows only
        texts = [str(t) for t in part[data.text_column]]
        pairs = [str(t) for t in part[data.text_pair_column]] if data.text_pair_column else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        truncated += sum(1 for ids in enc["input_ids"] if len(ids) >= max_length)
        names = [k for k in tokenizer.model_input_names if k in enc]
        yield [dict(zip(names, values)) for values in zip(*(enc[k] for k in names))]
    _report_truncation(source, truncated, len(table), max_length, who)
