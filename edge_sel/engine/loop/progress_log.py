"""Progress for a log nobody watches live (the systemd journal, nohup, tee): when stdout is not a
terminal, one flushed line per epoch and per phase (baseline, bn-adapt, the final evaluation),
written as it happens, and one as a long phase starts (the starting evaluation). On a terminal the
progress bars (stderr) show it instead."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from tqdm import tqdm

from edge_sel.core.records import planning_of


def progress_bar(total: int, desc: str, leave: bool, quiet: bool) -> tqdm:
    """An epoch's bar (batches) or the run's (epochs), on a terminal only."""
    return tqdm(total=total, desc=desc, leave=leave, unit="batch" if not leave else "epoch",
                disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True)


def _f(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


class ProgressLog:
    def __init__(self, quiet: bool, epochs: int, stream=None):
        self.stream = stream or sys.stdout
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.enabled = not quiet and not isatty()
        self.epochs = epochs

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def evaluating_start(self, sets, sized: dict | None = None) -> None:
        """Before the starting evaluation, which on a large test set runs a while with nothing else said;
        `sized`: how the validation images were sized to the run (engine/loop/val_size.py)."""
        val = (f"validation (of {sized['of']:,}: a fifth of the run's counted compute at most, at least "
               f"{sized['floor']}; --val-subset N to choose)" if sized and sized["val_subset"] < sized["of"]
               else "validation")
        held = getattr(sets, "anchors_held", 0)
        anchors = (f"guard anchors (of {held:,}, sized with the validation)" if held > len(sets.anchors or ())
                   else "guard anchors")
        parts = [(len(sets.val), val), (len(sets.anchors or ()), anchors), (len(sets.test), "test"),
                 (len(sets.clean_test or ()), "clean test")]
        self.line(f"start: evaluating the starting checkpoint on {sets.final_images():,} images ("
                  + ", ".join(f"{n:,} {what}" for n, what in parts if n) + ")")

    def unvalidated(self, sized: dict | None) -> None:
        """A run whose validation was sized to nothing (engine/loop/val_size.py no_validation)."""
        # Sized to nothing, not merely unaffordable: a guard or a run of no epoch validates at the floor.
        if sized is not None and not sized["validates"] and sized["val_subset"] == 0:
            self.line(f"validation: a fifth of this run's counted compute affords {sized['affordable']} images a pass, "
                      f"fewer than the {min(sized['floor'], sized['of'])} a choice between epochs needs: the run keeps "
                      f"its last epoch and validates none (--keep best or --val-subset N to validate)")

    def baseline(self, record: dict) -> None:
        if record.get("start_at_chance") is not None:
            self.line(f"start: the checkpoint's classifier was never trained: at chance "
                      f"({100 * record['start_at_chance']:.1f}%) by construction, so it is not evaluated "
                      f"and not a candidate for the output model")
            return
        self.line(f"start: the starting checkpoint: val {_f(record.get('val_acc'))}{self.anchors(record)} "
                   f"test {_f(record.get('test_acc'))} "
                   f"(evaluation {_f(record.get('eval_wall_s'), '.1f')} s, {_f(record.get('eval_energy_j'), '.1f')} J)")

    def bn_adapt(self, samples: int, flops: int, anchors: int = 0) -> None:
        also = f" and {anchors} anchor images" if anchors else ""
        self.line(f"bn-adapt: BatchNorm statistics from {samples} local images{also} ({flops / 1e9:.2f} GFLOP)")

    def epoch(self, record: dict) -> None:
        r = record
        # The first epoch's record holds the choosing before its first step: said apart, as the table does.
        plan_s, plan_j, _ = planning_of(r)
        plan_j = plan_j or 0.0
        planned = f" (planning {plan_s:.1f} s, {plan_j:.1f} J before it)" if plan_s else ""
        wall = None if r.get("wall_s") is None else r["wall_s"] - plan_s
        energy = (f", {r['energy_j'] - plan_j:.1f} J {r.get('energy_source')}/{r.get('energy_method')}"
                  if r.get("energy_j") is not None else "")
        self.line(f"{self.epoch_said(r.get('epoch'))}: loss {_f(r.get('train_loss'))} train "
                   f"{_f(r.get('train_acc'))} val {_f(r.get('val_acc'))}{self.anchors(r)} test {_f(r.get('test_acc'))} active "
                   f"{_f(r.get('activation'), '.2f')}, {(r.get('flops_train') or 0) / 1e9:.2f} GFLOP, "
                   f"{_f(wall, '.1f')} s{energy}; evaluation {_f(r.get('eval_wall_s'), '.1f')} s{planned}")

    def epoch_said(self, epoch) -> str:
        """Records count epochs from 0: 'epoch 7 (8 of 8)', never 'epoch 7/7' for a run of 8."""
        if not isinstance(epoch, int) or not self.epochs:
            return f"epoch {epoch}"
        return f"epoch {epoch} ({epoch + 1} of {self.epochs})"

    @staticmethod
    def anchors(record: dict) -> str:
        """The guard anchors beside validation: accuracy and points forgotten since the source."""
        if record.get("anchor_acc") is None:
            return ""
        lost = record.get("anchor_forgetting")
        return f" anchors {_f(record['anchor_acc'])}" + ("" if lost is None else f" ({-lost:+.1f} pt)")

    def evaluation(self, what: str, test_acc: float | None, wall_s: float | None, joules: float | None) -> None:
        self.line(f"evaluation: {what}: test {_f(test_acc)} ({_f(wall_s, '.1f')} s, {_f(joules, '.1f')} J)")


@contextmanager
def image_bar(desc: str | None, total: int, quiet: bool):
    """On a terminal, a bar of `total` images labelled `desc`: yields a function that wraps a batch
    predictor so that each batch it predicts advances the bar (elsewhere, the predictor as it is)."""
    if desc is None or quiet or not sys.stderr.isatty():
        yield lambda predict: predict
        return
    bar = tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)

    def counted(predict):
        def advancing(x):
            logits = predict(x)
            bar.update(len(x))
            return logits
        return advancing
    try:
        yield counted
    finally:
        bar.close()
