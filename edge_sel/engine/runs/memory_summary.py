"""summary.json's `memory` block: the counted peak of the run's largest step and its parts, the
counted forward-only passes, and the peaks measured beside them (engine/loop/memory_records.py)."""

from __future__ import annotations

from edge_sel.engine.loop.memory_records import PARTS

INCLUDES = {
    "counted_mb": "one training step of the run's largest counted trainable set and rows, counted on the meta "
                  "device: weights and buffers, optimizer state, the batch, and at the step's high-water mark the "
                  "activations saved for backward, the parameter gradients, the transient tensors and, on a CPU, the "
                  "running convolution's own blocked copies (estimated by a measured rule); not other kernels' "
                  "workspaces, the allocator's overhead, the datasets, or the process itself",
    "eval_counted_mb": "one forward-only evaluation pass (eval mode, no gradients) at the evaluation batch size: "
                       "weights, the batch, the transient tensors, a CPU convolution's own blocked copies",
    "bn_adapt_counted_mb": "one BatchNorm re-estimation pass (train mode, no gradients, up to 256 images a batch, fewer where a --memory-budget plan says)",
    "data_mb": "the datasets the run holds on its device (uint8 images, labels and ids of every split)",
    "measured_mb": "the largest growth over the level just before training, over the epochs' training windows "
                   "(steps, scoring and re-estimation passes); rss-hwm: the resident high-water mark (every page "
                   "the process touched: tensors, kernel workspaces, the allocator's kept pages, code loaded by the "
                   "first step); cuda-allocated: torch's max_memory_allocated on the training device",
    "eval_measured_mb": "the same for the evaluation passes",
    "eval_beside_mb": "what training keeps alive beside an evaluation pass (the optimizer's state, the last step's "
                      "gradients, the epoch's parameter copy, --keep best's copy), counted from the live tensors: "
                      "eval_measured_mb grows over the level before training by this and the pass's own count",
    "process_peak_mb": "the process's own resident high-water mark from its start to the last record (Python, "
                       "torch, the data, every pass; rss-hwm), or the most bytes allocated on a CUDA device",
    "budget_mb": "--memory-budget (MiB): what the plan fitted the training step's count in",
}


def largest(records: list[dict], key: str) -> dict | None:
    found = [r for r in records if r.get(key) is not None]
    return max(found, key=lambda r: r[key]) if found else None


def memory_block(records: list[dict], baseline: dict | None = None, budget_mb: float | None = None) -> dict | None:
    """None for a run that neither trained nor evaluated."""
    evaluated = ([baseline] if baseline else []) + records
    step = largest(records, "memory_counted_mb")
    figures = {key: (largest(over, f"memory_{key}") or {}).get(f"memory_{key}")
               for key, over in (("eval_counted_mb", evaluated), ("bn_adapt_counted_mb", records),
                                 ("measured_mb", records), ("eval_measured_mb", evaluated),
                                 ("process_peak_mb", evaluated), ("eval_beside_mb", evaluated))}
    if step is None and figures["eval_counted_mb"] is None:
        return None
    method = next((r["memory_measure_method"] for r in records if r.get("memory_measure_method")), None)
    return {
        "counted_mb": None if step is None else step["memory_counted_mb"],
        "counted_parts_mb": None if step is None else {k: step.get(f"memory_{k}_mb") for k in PARTS},
        "counted_epoch": None if step is None else step["epoch"],
        "step_samples": None if step is None else step.get("memory_step_samples"),
        **{k: v for k, v in figures.items() if v is not None or k not in ("bn_adapt_counted_mb", "process_peak_mb", "eval_beside_mb")},
        "data_mb": next((r["memory_data_mb"] for r in evaluated if r.get("memory_data_mb") is not None), None),
        "measure_method": method,
        "allocator": next((r["memory_allocator"] for r in evaluated if r.get("memory_allocator")), None),
        "budget_mb": budget_mb,
        "includes": INCLUDES,
    }
