"""The report's figures as PNG files (matplotlib's Agg canvas: no display, no global pyplot state).

Each function takes runs and a path, writes one PNG and returns its path, or returns None when the
runs hold nothing that figure shows (e.g. no gated run, no SEL stages)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from edge_sel.report.runs import (RunData, adaptation_flops, energy_axis_label, energy_kind, handed_back_acc,
                                  totals)

DPI = 110
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#ad494a"]
GATE_STYLE = {"pass": ("o", "#2ca02c"), "fail": ("X", "#d62728"), "repeat": ("^", "#ff7f0e")}
START_X = -1     # where the starting checkpoint sits on an epoch axis, labelled "start"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _system_legend(fig: Figure, runs: list[RunData], colors: dict[str, str], title: str = "run",
                   extra: list[tuple[Line2D, str]] = ()) -> None:
    """One entry per run (or system), outside the axes on the right, so no data is covered."""
    handles = [Line2D([], [], color=colors[_name(r)], marker="o", markersize=4) for r in runs]
    labels = [_name(r) for r in runs]
    for handle, label in extra:
        handles.append(handle)
        labels.append(label)
    fig.legend(handles, labels, loc="outside right center", fontsize=8, title=title)


def _epoch_axis(ax, xs: list[float] = ()) -> None:
    """Whole epochs, numbered from 0 as in the records and the console; START_X reads "start".
    `xs`: the epochs drawn, so that one or two points still get a sensible range."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: "start" if round(x) == START_X else f"{x:.0f}"))
    if xs:
        ax.set_xlim(min(xs) - 0.5, max(max(xs), min(xs) + 1) + 0.5)
    ax.grid(alpha=0.3)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _colors(runs: list[RunData]) -> dict[str, str]:
    """One colour per group (a system over seeds) or per run."""
    keys = []
    for r in runs:
        key = r.group or r.label
        if key not in keys:
            keys.append(key)
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def _one_per_group(runs: list[RunData]) -> list[RunData]:
    """Per-epoch figures show the first run of each group (the first seed)."""
    seen, out = set(), []
    for r in runs:
        key = r.group or r.label
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _name(run: RunData) -> str:
    return run.group or run.label


def _epochs(run: RunData) -> list[int]:
    """0-based as records, console and "best val epoch" count them (a run of phases counts on); a
    run that trained no epoch holds only its starting checkpoint's evaluation, drawn at "start"."""
    xs, epoch = [], 0
    for r in run.records:
        if r.get("phase") == "baseline":
            xs.append(START_X)
        else:
            xs.append(epoch)
            epoch += 1
    return xs


def _series(run: RunData, key: str, scale: float = 1.0, gaps: bool = False) -> tuple[list[int], list[float]]:
    """The epochs that recorded `key` and its values; with `gaps`, the epochs between that did not
    (the test set runs only at the last epoch by default) hold NaN, so a line does not join
    measurements across epochs where none was made."""
    xs, ys = [], []
    for x, r in zip(_epochs(run), run.records):
        v = r.get(key)
        if isinstance(v, (int, float)):
            xs.append(x)
            ys.append(v * scale)
        elif gaps:
            xs.append(x)
            ys.append(math.nan)
    if gaps:        # no NaN before the first value or after the last: the axis range stays the values'
        kept = [i for i, y in enumerate(ys) if not math.isnan(y)]
        xs, ys = (xs[kept[0]:kept[-1] + 1], ys[kept[0]:kept[-1] + 1]) if kept else ([], [])
    return xs, ys


def _phase_lines(ax, run: RunData, color: str) -> None:
    """Dotted vertical lines where a run made of phases (lottery, dense warmup) changes phase."""
    phases = [r.get("bench_phase") for r in run.records]
    for i in range(1, len(phases)):
        if phases[i] != phases[i - 1]:
            ax.axvline(i - 0.5, color=color, linestyle=":", linewidth=1)


def _place_labels(ax, points: list[tuple[float, float, str]]) -> None:
    """Annotate each point with its name, nudging labels down where they would overlap."""
    ax.figure.canvas.draw()          # axis limits are final only after a draw
    placed: list[tuple[float, float, float]] = []       # (left, right, baseline) in pixels
    to_px = ax.transData.transform
    for x, y, name in sorted(points, key=lambda p: (-p[1], p[0])):
        px, py = to_px((x, y))
        px += 5 * DPI / 72                                 # the label's offset from its point
        width = 6.2 * len(name) * DPI / 110
        dy = 4
        while any(px < right and left < px + width and abs(py + dy - qy) < 12 for left, right, qy in placed):
            dy -= 12
        placed.append((px, px + width, py + dy))
        label = ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, dy * 72 / DPI), fontsize=7,
                            arrowprops={"arrowstyle": "-", "color": "#aaaaaa", "linewidth": 0.5} if dy != 4 else None)
        label.set_in_layout(False)     # or the layout shrinks the axes and the positions above go stale


def pareto_points(runs: list[RunData]) -> list[dict]:
    """What the accuracy-against-cost figure draws, one entry per run: the accuracy the run hands
    back (its output model's; the last epoch's only where it states no output model, `output`
    False), the last epoch's beside it, training energy and counted adaptation FLOPs."""
    points = []
    for r in runs:
        t = totals(r)
        acc, output = handed_back_acc(t)
        points.append({"run": r.label, "name": _name(r), "acc": acc, "output": output, "last_acc": t["final_test_acc"],
                       "energy_j": t["energy_j"], "flops": adaptation_flops(t)})
    return points


def _front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Runs no other run beats on both axes (less cost and higher accuracy), by cost."""
    return sorted((p for p in points if not any(q[0] <= p[0] and q[1] > p[1] or q[0] < p[0] and q[1] >= p[1]
                                                for q in points)), key=lambda p: p[0])


def pareto(runs: list[RunData], path: Path, baseline: tuple[str, float] | None = None) -> Path:
    """The accuracy each run hands back (its output model's) against training energy and against
    counted adaptation FLOPs; a last epoch that differs is drawn hollow beside it. `baseline` (name,
    accuracy) draws a horizontal reference, e.g. the starting checkpoint's accuracy."""
    colors = _colors(runs)
    fig = _figure(13, 5)
    ax_e, ax_f = fig.subplots(1, 2)
    drawn = pareto_points(runs)
    have_energy = any(d["energy_j"] is not None for d in drawn)
    labelled, any_last, any_stand_in = [], False, False
    for ax, key, scale, xlabel in ((ax_e, "energy_j", 1.0, energy_axis_label(runs, "training energy")),
                                   (ax_f, "flops", 1e-9, "counted adaptation FLOPs (GFLOP): training and a bank's "
                                                         "re-estimation")):
        points = []
        groups: dict[str, list[dict]] = {}
        for d in drawn:
            if d[key] is not None and d["acc"] is not None:
                groups.setdefault(d["name"], []).append(d)
        for name, ds in groups.items():
            xs, ys = [d[key] * scale for d in ds], [100 * d["acc"] for d in ds]
            hollow = not all(d["output"] for d in ds)       # no output model stated: the last epoch stands in
            any_stand_in = any_stand_in or hollow
            face = "white" if hollow else colors[name]
            if len(ds) > 1:      # several seeds: each seed faint, the mean with its spread
                ax.scatter(xs, ys, color=colors[name], alpha=0.35, s=18)
                mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
                sx = (sum((x - mx) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
                sy = (sum((y - my) ** 2 for y in ys) / (len(ys) - 1)) ** 0.5
                ax.errorbar([mx], [my], xerr=[sx], yerr=[sy], fmt="o", color=colors[name], mfc=face, capsize=3)
                points.append((mx, my, name))
                continue
            ax.scatter(xs, ys, facecolors=face, edgecolors=colors[name], s=40, zorder=3)
            points.append((xs[0], ys[0], name))
            last = ds[0]["last_acc"]
            if ds[0]["output"] and last is not None and abs(100 * last - ys[0]) >= 0.005:
                # The last epoch, which the run did not hand back: hollow, joined to what it did.
                ax.plot([xs[0], xs[0]], [ys[0], 100 * last], ":", color=colors[name], linewidth=1)
                ax.scatter([xs[0]], [100 * last], facecolors="none", edgecolors=colors[name], marker="D", s=28,
                           zorder=3)
                any_last = True
        front = _front(points)
        if front:
            lo, hi = ax.get_xlim()
            # A staircase: each front run's accuracy holds until a costlier one beats it.
            ax.step([p[0] for p in front] + [hi], [p[1] for p in front] + [front[-1][1]], where="post",
                    linestyle="--", color="#555555", linewidth=1, zorder=1)
            ax.set_xlim(lo, hi)
        if baseline is not None:
            ax.axhline(100 * baseline[1], color="#999999", linestyle=":", linewidth=1.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy of the model the run hands back (%)")
        ax.grid(alpha=0.3)
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo, hi + 0.22 * (hi - lo))     # room for the labels of the rightmost points
        labelled.append((ax, points))
    seeds = max((len([r for r in runs if _name(r) == _name(q)]) for q in runs), default=1)
    spread = f"; mean ± std over {seeds} seeds, faint dots: single seeds" if seeds > 1 else ""
    ax_e.set_title(("Output model's accuracy against training energy\n(evaluation excluded; dashed: Pareto front)"
                    if have_energy else "No energy recorded by these runs") + spread, fontsize=10)
    ax_f.set_title("Output model's accuracy against counted adaptation FLOPs\n(dashed: Pareto front)", fontsize=10)
    extra = [] if baseline is None else \
        [(Line2D([], [], color="#999999", linestyle=":"), f"{baseline[0]}:\n{100 * baseline[1]:.2f}%")]
    if any_last:
        extra.append((Line2D([], [], color="#555555", marker="D", mfc="none", linestyle=":"),
                      "last epoch's test accuracy\n(not handed back)"))
    if any_stand_in:
        extra.append((Line2D([], [], color="#555555", marker="o", mfc="white", linestyle=""),
                      "hollow dot: no output model\nstated, last epoch shown"))
    _system_legend(fig, _one_per_group(runs), colors, extra=extra)
    for ax, points in labelled:       # last: the layout (legend included) decides the pixel positions
        _place_labels(ax, points)
    return _save(fig, path)


def per_epoch(runs: list[RunData], path: Path) -> Path:
    """Validation and test accuracy per epoch; training energy per epoch."""
    runs = _one_per_group(runs)
    colors = _colors(runs)
    fig = _figure(13, 4.8)
    ax_a, ax_e = fig.subplots(1, 2)
    for r in runs:
        c = colors[_name(r)]
        ax_a.plot(*_series(r, "test_acc", 100, gaps=True), "-o", color=c, markersize=3)
        ax_a.plot(*_series(r, "val_acc", 100), "--", color=c, linewidth=1)
        if r.baseline is not None and r.baseline.get("test_acc") is not None:
            # The starting checkpoint's accuracy on the same data: the bar the epochs must clear.
            ax_a.axhline(100 * r.baseline["test_acc"], color=c, linestyle=":", linewidth=1.2)
            ax_a.plot([START_X], [100 * r.baseline["test_acc"]], "s", color=c, markersize=4)
        ax_e.plot(*_series(r, "energy_j"), "-o", color=c, markersize=3)
        _phase_lines(ax_a, r, c)
    ax_a.set(xlabel="epoch", ylabel="accuracy (%)")
    with_start = any(r.baseline is not None for r in runs)
    ax_a.set_title("Accuracy per epoch (solid: test, dashed: validation"
                   + ("; dotted, start: the starting checkpoint's test accuracy)" if with_start else ")"), fontsize=10)
    ax_e.set(xlabel="epoch", ylabel=energy_axis_label(runs, "training energy per epoch"))
    ax_e.set_title("Training energy per epoch", fontsize=10)
    last = max((len(r.records) - 1 for r in runs), default=0)
    _epoch_axis(ax_a, [START_X if with_start else 0, last])
    _epoch_axis(ax_e, [0, last])
    _system_legend(fig, runs, colors)
    return _save(fig, path)


def power(runs: list[RunData], path: Path) -> Path | None:
    """Average and peak power of each training epoch (the records' per-epoch summary)."""
    runs = [r for r in _one_per_group(runs) if any(x.get("avg_power_w") is not None for x in r.records)]
    if not runs:
        return None
    colors = _colors(runs)
    fig = _figure(10, 4.6)
    ax = fig.subplots()
    for r in runs:
        c = colors[_name(r)]
        ax.plot(*_series(r, "avg_power_w"), "-o", color=c, markersize=3)
        xs, ys = _series(r, "peak_power_w")
        if ys:
            ax.plot(xs, ys, ":", color=c, linewidth=1)
    kinds = {energy_kind(r.records)[1] for r in runs} - {None}
    ax.set(xlabel="epoch", ylabel=f"power (W, {', '.join(sorted(kinds)) or 'not measured'})")
    ax.set_title("Power per training epoch (solid: average over the epoch, dotted: highest reading)", fontsize=10)
    _epoch_axis(ax, [0, max(len(r.records) - 1 for r in runs)])
    _system_legend(fig, runs, colors)
    return _save(fig, path)


def _class_accuracy(run: RunData, name: str) -> tuple[list[int], list[float]]:
    """A class's test accuracy at the start (the starting checkpoint) and at every epoch that ran
    the test set (by default only the last)."""
    xs, ys = _series(run, f"acc_{name}", 100, gaps=True)
    start = (run.baseline or {}).get(f"acc_{name}")
    if isinstance(start, (int, float)):
        # Joined to epoch 0 only when epoch 0 ran the test set.
        xs, ys = [START_X, *([0] if xs and xs[0] != 0 else []), *xs], \
            [100 * start, *([math.nan] if xs and xs[0] != 0 else []), *ys]
    return xs, ys


def per_class(run: RunData, path: Path) -> Path | None:
    """Per-class test accuracy (start to end) and embarrassment E_c over the epochs of one run."""
    fig = per_class_figure(run)
    return None if fig is None else _save(fig, path)


def per_class_figure(run: RunData) -> Figure | None:
    classes = run.class_names
    if not classes:
        return None
    fig = _figure(13, 4.6)
    ax_a, ax_e = fig.subplots(1, 2)
    acc_xs, e_xs = [], []
    for i, name in enumerate(classes):
        c = PALETTE[i % len(PALETTE)]
        xs, ys = _class_accuracy(run, name)
        ax_a.plot(xs, ys, "-o", color=c, markersize=4, label=name)
        acc_xs += xs
        xs, ys = _series(run, f"E_{name}")
        ax_e.plot(xs, ys, "-o", color=c, markersize=3)
        e_xs += xs
    ax_a.set(xlabel="epoch", ylabel="test accuracy of the class (%)")
    ax_a.set_title(f"{_name(run)}: per-class test accuracy (start: the starting checkpoint)", fontsize=10)
    ax_e.set(xlabel="epoch", ylabel="E_c = mean CE(logits / T, y), T = 1.5 (nats)")
    ax_e.set_title(f"{_name(run)}: per-class embarrassment E_c (training forward pass)", fontsize=10)
    if not e_xs:        # E_c comes from training forward passes: none ran
        ax_e.text(0.5, 0.5, "no epoch was trained:\nno training forward pass, so no E_c",
                  transform=ax_e.transAxes, ha="center", va="center", fontsize=11, color="#555555")
        ax_e.set_xticks([])
        ax_e.set_yticks([])
    else:
        _epoch_axis(ax_e, e_xs)
        _phase_lines(ax_e, run, "#999999")
    _epoch_axis(ax_a, acc_xs or [0])
    _phase_lines(ax_a, run, "#999999")
    handles, labels = ax_a.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, title="class")
    return fig


def gating(runs: list[RunData], path: Path) -> Path | None:
    """Share of samples computed per epoch (all runs) and the gates' threshold traces."""
    runs = _one_per_group(runs)
    gated = [r for r in runs if any(x.get("threshold_mean") is not None for x in r.records)]
    if not any(x.get("activation") is not None for r in runs for x in r.records):
        return None
    colors = _colors(runs)
    fig = _figure(13 if gated else 9, 4.8)
    axes = fig.subplots(1, 2 if gated else 1)
    ax_a = axes[0] if gated else axes
    for r in runs:
        c = colors[_name(r)]
        ax_a.plot(*_series(r, "activation"), "-o", color=c, markersize=3)
        gate = _series(r, "gate_activation")
        act = dict(zip(*_series(r, "activation")))
        if gate[1] and any(abs(act.get(x, y) - y) > 1e-6 for x, y in zip(*gate)):
            ax_a.plot(*gate, "--", color=c, linewidth=1.2)
        target = _series(r, "target_activation")
        if target[1]:
            ax_a.plot(*target, ":", color=c, linewidth=1.5)
    ax_a.set(xlabel="epoch", ylabel="share of available training samples", ylim=(0, 1.05))
    # Short lines: the two panels' titles sit side by side and must not run into each other.
    ax_a.set_title("Activation per epoch. Solid: computed\n(forward + backward); dashed: loss counted\n"
                   "(gates that compute every sample); dotted: target", fontsize=10)
    last = max((len(r.records) - 1 for r in runs), default=0)
    _epoch_axis(ax_a, [0, last])
    if gated:
        ax_t = axes[1]
        for r in gated:
            c = colors[_name(r)]
            xs, mean = _series(r, "threshold_mean")
            ax_t.plot(xs, mean, "-o", color=c, markersize=3)
            lo, hi = _series(r, "threshold_min")[1], _series(r, "threshold_max")[1]
            if len(lo) == len(xs) == len(hi):
                ax_t.fill_between(xs, lo, hi, color=c, alpha=0.15)
        ax_t.set(xlabel="epoch", ylabel="threshold tau (each gate's significance scale)")
        lo, hi = ax_t.get_ylim()
        if lo <= 1.0 <= hi:
            ax_t.axhline(1.0, color="#999999", linestyle=":", linewidth=1)
        # sundew keeps a sample with probability sigmoid((s - tau) / T): its controller may move tau
        # past the largest significance, so the title must not promise a [0, 1] axis.
        ax_t.set_title("Gate threshold tau per epoch: mean, shaded min to max.\nast-prod: raw 0.7 CE + 0.3 entropy; "
                       "sundew:\nsignificances lie in [0, 1] (dotted: 1), tau may pass them", fontsize=10)
        _epoch_axis(ax_t, [0, max(len(r.records) - 1 for r in gated)])
    _system_legend(fig, runs, colors)
    return _save(fig, path)


def stages(runs: list[RunData], path: Path) -> Path | None:
    """SEL stage timeline: stage per epoch, the gate outcome at each stage end, validation accuracy
    against the stage's threshold."""
    staged = [r for r in _one_per_group(runs) if any(x.get("stage") is not None for x in r.records)]
    if not staged:
        return None
    fig = _figure(12, 3.4 * len(staged))
    axes = fig.subplots(len(staged), 1, squeeze=False)[:, 0]
    for ax, r in zip(axes, staged):
        xs, st = _series(r, "stage")
        ax.step(xs, st, where="mid", color="#1f77b4", label="stage (0: dense warmup)")
        ax.set(xlabel="epoch", ylabel="curriculum stage")
        enforced = any(rec.get("stage_gates_enforced") for rec in r.records)
        ax.set_title(f"{_name(r)}: stage timeline (gates {'enforced' if enforced else 'recorded, not enforced'})",
                     fontsize=10)
        ax.set_yticks(sorted({int(v) for v in st}))
        _epoch_axis(ax, [0, len(r.records) - 1])
        ax2 = ax.twinx()
        ax2.plot(*_series(r, "val_acc", 100), "--", color="#7f7f7f", linewidth=1,
                 label="validation accuracy (%, right axis)")
        tx, th = _series(r, "stage_threshold", 100)
        if th:
            ax2.scatter(tx, th, marker="_", s=160, color="#d62728", label="stage threshold (%)")
        # Each gate outcome sits on the validation accuracy it was decided on, next to its threshold.
        for outcome, (marker, color) in GATE_STYLE.items():
            pts = [(x, 100 * rec["val_acc"]) for x, rec in zip(_epochs(r), r.records)
                   if rec.get("stage_gate") == outcome and rec.get("val_acc") is not None]
            if pts:
                ax2.scatter(*zip(*pts), marker=marker, color=color, s=60, zorder=3, label=f"stage gate: {outcome}")
        ax2.set_ylabel("validation accuracy (%)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left", bbox_to_anchor=(1.08, 1.0))
    return _save(fig, path)


def write_all(runs: list[RunData], out: Path, baseline: tuple[str, float] | None = None
              ) -> list[tuple[str, Path, str]]:
    """Every figure the runs support: (title, path, caption)."""
    out = Path(out)
    figures = [
        ("Accuracy against energy and counted FLOPs", pareto(runs, out / "pareto.png", baseline),
         "Each point is the test accuracy of the model a run hands back (its output model: what promote would "
         "deploy) against the training energy it used (evaluation passes excluded) and against its counted "
         "adaptation FLOPs (training, and a --bn-conditions bank's re-estimation passes); where the last epoch "
         "scored otherwise, a hollow diamond below or above it shows the last epoch. The dashed staircase is the "
         "Pareto front: the runs no other run beats on both axes. The values drawn are in the table below."),
        ("Accuracy and energy per epoch", per_epoch(runs, out / "epochs.png"),
         "Validation accuracy selects; test accuracy reports. Energy is per training epoch. Dotted vertical "
         "lines mark a change of phase (e.g. the lottery's prune and rewind)."),
        ("Power", power(runs, out / "power.png"),
         "Average and peak power of each training epoch as the meter recorded them."),
        ("Activation and gate thresholds", gating(runs, out / "gating.png"),
         "Activation is the share of training samples that ran a forward and backward pass. For a gate that "
         "computes every sample and masks the loss (ast-prod), the dashed line is the share whose loss counted."),
        ("SEL stage timeline", stages(runs, out / "stages.png"),
         "Stage per epoch (left axis); validation accuracy, each stage's threshold and the outcome of its "
         "gate at the stage's last epoch (right axis)."),
    ]
    for i, r in enumerate(_one_per_group(runs)):
        figures.append((f"Per-class accuracy and embarrassment: {_name(r)}",
                        per_class(r, out / f"classes_{i + 1}.png"),
                        "Per-class test accuracy and E_c (temperature 1.5) from the training forward pass."))
    return [(title, p, caption) for title, p, caption in figures if p is not None]


def accuracy_memory(points: list[tuple[float, float, str]], path: Path, title: str, xlabel: str,
                    ylabel: str) -> Path:
    """Accuracy against memory (log x), one labelled point per method: (MB, accuracy %, name)."""
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    for i, (x, y, _) in enumerate(points):
        ax.plot([x], [y], "o", color=PALETTE[i % len(PALETTE)], markersize=6)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    _place_labels(ax, points)
    return _save(fig, path)


def accuracy_joules(points: list[dict], path: Path, title: str) -> Path:
    """Accuracy against training joules (log x), one labelled point per method (bench/transfer_front.py's
    front_points: `joules`, `acc`, `label` with its memory, `front`, `choice`), the front as a dashed
    staircase, and the planner's rows as stars."""
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    for i, p in enumerate(points):
        planner = p["name"].startswith("planner@")
        ax.plot([p["joules"]], [100 * p["acc"]], "*" if planner else "o", color=PALETTE[i % len(PALETTE)],
                markersize=10 if planner else 6)
    front = sorted((p for p in points if p["front"]), key=lambda p: p["joules"])
    if len(front) > 1:
        ax.step([p["joules"] for p in front], [100 * p["acc"] for p in front], where="post", linestyle="--",
                color="#888888", linewidth=1)
    ax.set_xscale("log")
    joules = [p["joules"] for p in points]
    ax.set_xlim(min(joules) / 1.3, max(joules) * 3)         # room for the rightmost labels
    ax.set_xlabel("training joules (mean over seeds, log)")
    ax.set_ylabel("device test accuracy % (mean over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    _place_labels(ax, [(p["joules"], 100 * p["acc"], p["label"]) for p in points])
    return _save(fig, path)
