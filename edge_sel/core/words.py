"""Counts in messages: "1 epoch", "2 epochs"."""


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")
