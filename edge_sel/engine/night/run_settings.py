"""How a run evaluated, read back from its summary.json: the deployed model is judged in the same
settings (precision, layout, threads, evaluation batch) as the run judged its start."""

from __future__ import annotations

from pathlib import Path

from edge_sel.errors import read_json


def run_summary(run_dir: Path | None) -> dict:
    """The run's summary.json as the deployed model's judge reads its choices from it: {} where it
    is missing, unreadable or not a mapping (its settings then fall back to the defaults)."""
    try:
        summary = read_json(Path(run_dir) / "summary.json")
    except (OSError, ValueError, TypeError):
        return {}
    return summary if isinstance(summary, dict) else {}


def run_evaluation(summary: dict) -> dict:
    """How the run evaluated (its summary's choices): the forward passes' precision, the memory
    layout and torch's threads; fp32, contiguous and this process's threads where it does not say."""
    def stated(block: str, key: str, allowed) -> object:
        value = (summary.get(block) or {}).get(key) if isinstance(summary.get(block), dict) else None
        return value if value in allowed else None
    return {"eval": stated("precision", "eval", ("fp32", "bf16")) or "fp32",
            "memory_format": stated("layout", "memory_format", ("channels_last", "contiguous")) or "contiguous",
            "threads": stated("threads", "count", range(1, 1025))}


def run_eval_batch(summary: dict) -> int | None:
    """The evaluation batch the run chose (its layout), so the deployed model's statistics are
    re-estimated in the same batches as the run's start was."""
    layout = summary.get("layout")
    batch = layout.get("eval_batch_size") if isinstance(layout, dict) else None
    return batch if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0 else None
