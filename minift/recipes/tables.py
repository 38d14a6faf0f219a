"""Rows of results as an aligned text table, as `minift compare` and `minift experiment` print them."""

from __future__ import annotations


def format_table(rows: list[dict]) -> str:
    """Rows as an aligned text table (floats to 3 decimals; list-valued fields such as curves left out)."""
    fields = [k for k in dict.fromkeys(k for row in rows for k in row)
              if not any(isinstance(row.get(k), (list, tuple, dict)) for row in rows)]
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    widths = {f: max(len(f), *(len(cell(r.get(f, ""))) for r in rows)) for f in fields}
    lines = ["  ".join(f.rjust(widths[f]) for f in fields)]
    lines += ["  ".join(cell(r.get(f, "")).rjust(widths[f]) for f in fields) for r in rows]
    return "\n".join(lines)
