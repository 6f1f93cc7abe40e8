"""bench transfer's planner rows (bench/transfer_front.py): the best fixed set that fits a budget, the
accuracy-joules front with memory per point and the planner's choice, and the planner's paired
difference against the best fixed set run under its budget."""

import json

from edge_sel.bench.transfer_front import fixed_by_accuracy, front_lines, front_points
from edge_sel.report.plots import accuracy_joules


def rows(accs, joules, run_dir="-", counted=10.0):
    return [{"seed": s, "test_acc": a, "energy_j": joules, "counted_peak_mb": counted, "measured_peak_mb": counted + 1,
             "train_wall_s": 1.0, "flops_train": 1, "run_dir": run_dir} for s, a in enumerate(accs)]


def test_the_best_fixed_set_is_the_most_accurate_of_those_that_fit():
    results = {"classifier": rows([0.5, 0.6], 1), "last-k": rows([0.7, 0.8], 2), "full FT": rows([0.9, 0.9], 5)}
    assert fixed_by_accuracy(results, ["classifier", "last-k"]) == ["last-k", "classifier"]
    assert fixed_by_accuracy(results, ["classifier", "sparse"]) == ["classifier"]       # sparse did not run
    assert fixed_by_accuracy(results, []) == []


def test_the_front_marks_undominated_points_and_the_planners_choice(tmp_path):
    run = tmp_path / "planner"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"memory_plan": {"gains": {"chosen": "last-2"}}}))
    bench = {"results": {"start": rows([0.4], 0), "full FT": rows([0.90, 0.92], 50, counted=40),
                         "classifier": rows([0.60, 0.62], 5, counted=5),
                         "bias+bn+classifier": rows([0.58, 0.60], 20, counted=30),      # dominated by classifier
                         "planner@1/4": rows([0.85, 0.87], 10, str(run), counted=9),
                         "best fixed@1/4": rows([0.84, 0.85], 12, counted=9)},
             "best_fixed": {"1/4": {"budget_mb": 10.0, "fitting": ["classifier", "last-k"], "method": "last-k"}},
             "refused": {"best fixed@1/4": [{"seed": 2, "budget_mb": 10.0, "needs_mb": 11.0, "reason": "-"}]}}
    text = "\n".join(front_lines(bench))
    line = {ln.split(" | ")[0][2:]: ln for ln in text.splitlines() if ln.startswith("| ") and " | " in ln}
    assert "| yes |" in line["classifier"] and "| yes |" in line["full FT"] and "| yes |" in line["planner@1/4"]
    assert "| yes |" not in line["bias+bn+classifier"] and "start" not in line
    assert line["planner@1/4"].rstrip().endswith("| last-2 |") and "| 9.0 | 10.0 |" in line["planner@1/4"]
    # The figure draws the same points: labelled with their memory and the planner's choice, cheapest first.
    points = front_points(bench)
    assert [(p["label"], p["front"]) for p in points] == [
        ("classifier, 5 MiB", True), ("planner@1/4: last-2, 9 MiB", True), ("best fixed@1/4, 9 MiB", False),
        ("bias+bn+classifier, 30 MiB", False), ("full FT, 40 MiB", True)]
    assert accuracy_joules(points, tmp_path / "front.png", "t").stat().st_size > 1000
    # Planner minus the best fixed set under the same budget: +1.5 points over two seeds, 10/12 of its joules.
    assert "| 1/4 | 10.0 | classifier, last-k | last-k (refused its budget on 1 seed) | +1.50 [" in text
    assert "| 0.83x |" in text
