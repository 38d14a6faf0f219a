"""Figures written to files: matplotlib on its file-only backend, and one way to finish and save a figure.

Every plot minift and its benchmarks make (training curves, experiments, `minift compare`, the
benchmark figures) goes through these two functions, so they look alike and need no screen.
"""

from __future__ import annotations

import os


def pyplot():
    """matplotlib.pyplot on the Agg backend: PNG files only, so it works on servers and in CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 120, title: str | None = None, rect=None) -> None:
    """Lay out `fig` (inside `rect`, when a legend sits outside the axes), write it to `path`, close it."""
    if title:
        fig.suptitle(title)
    fig.tight_layout(**({"rect": rect} if rect else {}))
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
