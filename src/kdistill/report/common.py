"""What the reports share: matplotlib, imported lazily (so `kdistill --help` and training never load it), and
figures saved atomically."""

from ..files import atomic_write


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
