"""What the reports share: matplotlib, imported lazily (so `kdistill --help` and training never load it), figures
saved atomically, and a document written once as a list of blocks and rendered to Markdown and to HTML."""

import base64
import html
import os
import re

from ..files import atomic_write


def teachers_text(evaluation: dict, metric: str = "accuracy") -> str | None:
    """An ensemble's teachers as eval.json records them (`teachers`, `teacher_disagreement`), in one sentence:
    'teachers: a (weight 1) accuracy 61.00%, ECE 5.12%; b (weight 3) ...; their top-1 classes differ on 12.50% of
    the test items'. None for a run with one teacher."""
    entries = evaluation.get("teachers")
    if not entries:
        return None
    parts = []
    for entry in entries:
        shown = [f"{name} {100 * entry[key]:.2f}%" for key, name in ((metric, metric.replace("_", " ")), ("ece", "ECE"))
                 if entry.get(key) is not None]
        parts.append(f"{os.path.basename(entry['path'].rstrip(os.sep))} (weight {entry['weight']:g}) {', '.join(shown)}")
    text = "teachers: " + "; ".join(parts)
    if evaluation.get("teacher_disagreement") is not None:
        text += f"; their top-1 classes differ on {100 * evaluation['teacher_disagreement']:.2f}% of the test items"
    return text


def pyplot():
    """matplotlib.pyplot on the Agg back end (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> None:
    """`fig` as a PNG at `path`, written to a temporary file and renamed; then the figure is closed."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    pyplot().close(fig)


_INLINE = [(re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"), (re.compile(r"`(.+?)`"), r"<code>\1</code>")]


def _inline_html(text: str) -> str:
    text = html.escape(text)
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    return text


def to_markdown(blocks: list[tuple]) -> str:
    """Blocks as Markdown: ("h1" | "h2" | "p", text), ("table", header, rows), ("img", file, caption)."""
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}")
        elif kind == "h2":
            out.append(f"## {block[1]}")
        elif kind == "p":
            out.append(block[1])
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                                 + ["| " + " | ".join(r) + " |" for r in rows]))
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[tuple], directory: str, title: str) -> str:
    """A self-contained page: the images (files in `directory`) are embedded as base64 data URIs."""
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{_inline_html(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            with open(os.path.join(directory, block[1]), "rb") as fh:
                data = base64.b64encode(fh.read()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{_inline_html(block[2])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
             "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:3px 7px}"
             "img{max-width:100%}figcaption{color:#555;font-size:90%}")
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
