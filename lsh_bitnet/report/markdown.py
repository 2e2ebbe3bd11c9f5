"""Markdown pipe tables of string cells, as `DataFrame.to_markdown(index=False, disable_numparse=True)` (tabulate's
"pipe" format) writes them, byte for byte, without tabulate's per-cell type detection: at 10,000 runs that was
~30% of the collector's time (docs/BENCHMARKS.md, issue 26 item 5). tests/test_collect.py checks the two agree.

Cells that tabulate lays out its own way (line breaks: multi-line rows; escape sequences: invisible-width codes)
go to tabulate itself.
"""
from typing import List, Optional, Sequence

import pandas as pd

# tabulate pads every header by this much before it sizes a column (tabulate.MIN_PADDING)
HEADER_PADDING = 2


def pipe_table(df: pd.DataFrame, colalign: Optional[Sequence[str]] = None) -> str:
    """df (cells str, or anything str() renders) as a pipe table; colalign per column "left" / "right" (default
    all left, as tabulate aligns strings)."""
    headers = [str(c) for c in df.columns]
    rows: List[List[str]] = [[str(v).strip() for v in row] for row in df.itertuples(index=False, name=None)]
    if any("\n" in c or "\x1b" in c for row in rows for c in row) or any("\n" in h for h in headers):
        return df.to_markdown(index=False, disable_numparse=True, colalign=colalign)
    align = list(colalign) if colalign is not None else ["left"] * len(headers)
    widths = [max([len(h) + HEADER_PADDING] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if a == "right" else c.ljust(w)
                                  for c, w, a in zip(cells, widths, align)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if a == "right" else ":" + "-" * (w + 1)
                          for w, a in zip(widths, align)) + "|"
    return "\n".join([line(headers), rule] + [line(row) for row in rows])
