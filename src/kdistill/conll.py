"""Word-tagged data: the CoNLL format and IOB tags (no torch; the data layer reads through here).

A CoNLL file holds one token a line, its columns separated by spaces (the token first, the tag last unless
`column_names` says otherwise), a blank line between sentences; `-DOCSTART-` lines mark documents and are skipped.
Tags are IOB2 (`B-PER`, `I-PER`, `O`): every entity begins with `B-`. IOB1 data, whose entities begin with `I-`
unless they follow one of their own type, is converted to IOB2 as it is read.

Errors name the file and the line (CoNLL) or the row (JSON Lines, parquet) in one line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .errors import UserError

logger = logging.getLogger(__name__)

DOCSTART = "-DOCSTART-"
OUTSIDE = "O"


def check_tag(tag: str, where: str) -> None:
    """`tag` is `O`, or `B-TYPE` / `I-TYPE` with a type; a UserError naming `where` otherwise."""
    if tag == OUTSIDE:
        return
    prefix, dash, kind = tag.partition("-")
    if not dash or prefix not in ("B", "I") or not kind:
        raise UserError(f"{where}: tag {tag!r} is not an IOB tag (O, B-TYPE or I-TYPE, e.g. B-PER)")


def to_iob2(tags: Sequence[str]) -> tuple[list[str], int]:
    """IOB2 tags for one sentence, and how many were changed: an `I-X` that begins an entity (after `O`, at the
    start, or after another type) becomes `B-X`. IOB2 tags come back unchanged (0 changed)."""
    out, changed, previous = [], 0, OUTSIDE
    for tag in tags:
        if tag.startswith("I-") and (previous == OUTSIDE or previous[2:] != tag[2:]):
            tag, changed = "B-" + tag[2:], changed + 1
        out.append(tag)
        previous = tag
    return out, changed


def _column_positions(column_names: Sequence[str] | None, token_column: str, tag_column: str | None,
                      path: str) -> tuple[int, int | None, int]:
    """(token position, tag position or None, columns a line needs) of a CoNLL line; -1 is the last column."""
    if not column_names:
        return 0, (-1 if tag_column is not None else None), (2 if tag_column is not None else 1)
    names = list(column_names)
    for name in [token_column, *([tag_column] if tag_column is not None else [])]:
        if name not in names:
            raise UserError(f"{path}: no column {name!r} among column_names ({', '.join(names)}); set text_column "
                            "and label_column to two of them")
    token = names.index(token_column)
    tag = names.index(tag_column) if tag_column is not None else None
    return token, tag, max(token, tag if tag is not None else 0) + 1


def read_conll(path: str, token_column: str = "tokens", tag_column: str | None = "tags",
               column_names: Sequence[str] | None = None, encoding: str = "utf-8") -> dict[str, list]:
    """The sentences of a CoNLL file: {token_column: [[word, ...], ...], tag_column: [[tag, ...], ...]} (tags only
    when `tag_column` is given), IOB1 converted to IOB2.

    Args:
        column_names: names of the file's columns in order, so that `token_column` and `tag_column` pick them; by
            default the token is the first column and the tag the last.

    Raises UserError naming the file and line for a line with too few columns or a tag that is not IOB, and for a
    file that holds no sentence.
    """
    token_at, tag_at, needed = _column_positions(column_names, token_column, tag_column, path)
    sentences: list[list[str]] = []
    tags: list[list[str]] = []
    words: list[str] = []
    labels: list[str] = []
    try:
        with open(path, encoding=encoding) as fh:
            for number, line in enumerate(fh, start=1):
                columns = line.split()
                if not columns:
                    if words:
                        sentences.append(words)
                        tags.append(labels)
                    words, labels = [], []
                    continue
                if columns[0] == DOCSTART:
                    continue
                if len(columns) < needed:
                    what = "a token and a tag" if column_names is None else f"columns {', '.join(column_names)}"
                    raise UserError(f"{path}:{number}: {len(columns)} column(s) {line.strip()!r}; a line needs "
                                    f"{needed} ({what}), separated by spaces")
                words.append(columns[token_at])
                if tag_at is not None:
                    check_tag(columns[tag_at], f"{path}:{number}")
                    labels.append(columns[tag_at])
    except UnicodeDecodeError as err:
        from .files import decode_error

        raise decode_error(path, encoding, err) from None
    if words:
        sentences.append(words)
        tags.append(labels)
    if not sentences:
        raise UserError(f"{path}: the file holds no sentences (one token a line, a blank line between sentences)")
    out: dict[str, list] = {token_column: sentences}
    if tag_column is not None:
        out[tag_column] = convert_iob1(tags, path)
    return out


def convert_iob1(tags: list[list[str]], source: str) -> list[list[str]]:
    """Each sentence's tags as IOB2; logs once how many tags an IOB1 file had changed."""
    out, changed = [], 0
    for row in tags:
        row, n = to_iob2(row)
        out.append(row)
        changed += n
    if changed:
        logger.info("%s: %d entity tag(s) began with I- (IOB1); read as B- (IOB2)", source, changed)
    return out


def check_rows(tokens: Sequence, tags: Sequence | None, source: str) -> None:
    """Rows of a table (JSON Lines, parquet) as word-tagged sentences: each a non-empty list of strings, with one IOB
    tag per word; a UserError naming the first bad row (counted from 1) otherwise."""
    for i, words in enumerate(tokens):
        where = f"{source}: row {i + 1}"
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise UserError(f"{where}: tokens must be a list of strings, got {type(words).__name__}")
        if not words or any(not w.strip() for w in words):
            raise UserError(f"{where}: an empty sentence or an empty token; remove it or fix the file")
        if tags is None:
            continue
        labels = tags[i]
        if not isinstance(labels, list) or len(labels) != len(words):
            got = f"{len(labels)} tags" if isinstance(labels, list) else f"a {type(labels).__name__}"
            raise UserError(f"{where}: {len(words)} tokens but {got}; give one tag per token")
        for tag in labels:
            if not isinstance(tag, str):
                raise UserError(f"{where}: tag {tag!r} is not a string (IOB tags: O, B-TYPE, I-TYPE)")
            check_tag(tag, where)
