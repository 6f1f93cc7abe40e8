"""How a step's rows split into micro-batches: near-evenly, in as few as hold at most `most` rows
each (33 rows at most 8 a micro-batch: five of 6-7; never 8, 8, 8, 8, 1). A trailing micro-batch of
one row would train BatchNorm statistics on one image, or fail where a map is 1 x 1."""

from __future__ import annotations


def bounds(n: int, most: int) -> list[tuple[int, int]]:
    """(start, end) of each micro-batch of `n` rows, at most `most` rows each (0: the whole batch)."""
    if not most or most >= n:
        return [(0, n)]
    k = -(-n // most)
    cuts = [n * i // k for i in range(k + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def sizes(n: int, most: int) -> list[int]:
    return [hi - lo for lo, hi in bounds(n, most)]


def fewest_images(most: int, rows: int) -> int:
    """The fewest rows a micro-batch holds in a split step of up to `rows` rows at most `most` a
    micro-batch (steps of `most` rows or fewer run whole: their own size is not the plan's choice);
    `rows` where no step of up to `rows` rows is split."""
    if not most or most >= rows:
        return rows
    return min(min(sizes(n, most)) for n in range(most + 1, rows + 1))
