"""Inter-annotator agreement: Cohen's kappa (two raters) and Fleiss' kappa (many).

Pure numpy; no database here. ``kappa`` values are in [-1, 1]; 1 is perfect
agreement, 0 is what chance alone gives. Both return ``nan`` when agreement by
chance is total (every rating the same category), where kappa is undefined.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters' labels of the same items (same order)."""
    if len(a) != len(b):
        raise ValueError(f"the two raters rated {len(a)} and {len(b)} items; need pairs")
    if len(a) == 0:
        raise ValueError("Cohen's kappa needs at least one item rated by both raters")
    cats = sorted(set(a) | set(b), key=str)
    index = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(cats), len(cats)))
    for x, y in zip(a, b):
        table[index[x], index[y]] += 1
    n = table.sum()
    po = np.trace(table) / n
    pe = float((table.sum(0) / n) @ (table.sum(1) / n))
    if pe == 1.0:
        return float("nan")
    return float((po - pe) / (1.0 - pe))


def fleiss_table(ratings: Sequence[Sequence[Hashable]],
                 categories: Sequence[Hashable] | None = None) -> np.ndarray:
    """Items x categories count table from each item's list of ratings."""
    cats = list(categories) if categories is not None else sorted(
        {r for item in ratings for r in item}, key=str)
    index = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(ratings), len(cats)), dtype=np.int64)
    for i, item in enumerate(ratings):
        for r in item:
            if r not in index:
                raise ValueError(f"rating {r!r} is not one of the categories {cats}")
            table[i, index[r]] += 1
    return table


def fleiss_kappa(table: np.ndarray) -> float:
    """Fleiss' kappa from an items x categories table of rating counts.

    Every item must have the same number of ratings (at least two).
    """
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] == 0:
        raise ValueError(f"need a non-empty items x categories table, got {table.shape}")
    per_item = table.sum(axis=1)
    n = per_item[0]
    if n < 2 or not np.all(per_item == n):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings per item;"
                         f" got {sorted(set(per_item.astype(int).tolist()))}")
    big_n = table.shape[0]
    p_j = table.sum(axis=0) / (big_n * n)
    p_i = ((table * (table - 1)).sum(axis=1)) / (n * (n - 1))
    p_bar = p_i.mean()
    pe = float((p_j ** 2).sum())
    if pe == 1.0:
        return float("nan")
    return float((p_bar - pe) / (1.0 - pe))
