"""Round totals from the clients' reports. A fleet's energy, FLOPs and samples are sums over its
devices (Flower's default aggregation would average them); accuracies are averaged, weighted by
each client's number of training examples."""

from __future__ import annotations

import math

SUMMED = ("num-examples", "samples_trained", "forward_samples", "flops_forward", "flops_backward", "flops_scoring",
          "flops_calibration", "rolled_back_flops", "flops_train", "flops_eval", "energy_j", "eval_energy_j")
AVERAGED = ("local_val_acc", "local_train_acc")
SLOWEST = ("wall_s",)          # a round lasts as long as its slowest client


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def combine(reports: list[dict], weight_key: str = "num-examples") -> dict:
    """One mapping of totals from the clients' numeric reports."""
    out: dict = {}
    for key in SUMMED:
        values = [r[key] for r in reports if key in r]
        if values:
            out[key] = sum(values) if all(_finite(v) for v in values) else float("nan")
    for key in SLOWEST:
        values = [r[key] for r in reports if _finite(r.get(key))]
        if values:
            out[key] = max(values)
    for key in AVERAGED:
        pairs = [(r[key], r.get(weight_key, 1)) for r in reports if _finite(r.get(key))]
        total = sum(w for _, w in pairs)
        if pairs and total > 0:
            out[key] = sum(v * w for v, w in pairs) / total
    return out


def flower_sum_aggregation(replies, weighted_by_key: str):
    """train_metrics_aggr_fn for Flower strategies: the clients' MetricRecords combined as above."""
    from flwr.app import MetricRecord
    reports = [dict(next(iter(content.metric_records.values()))) for content in replies]
    return MetricRecord({k: v for k, v in combine(reports, weighted_by_key).items() if _finite(v)})
