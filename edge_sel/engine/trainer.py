"""The one training loop: strategy plan -> batches -> backend step -> observations -> records."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from edge_sel.backends import make_backend
from edge_sel.backends.torch_backend import make_optimizer
from edge_sel.config import TrainConfig
from edge_sel.data import BatchLoader, Splits
from edge_sel.engine.evaluate import EmbarrassmentMeter, accuracy, per_class_accuracy, predict_dataset
from edge_sel.engine.flops import FlopCounter
from edge_sel.engine.schedule import lr_factor
from edge_sel.methods import RunContext, Strategy, Updater
from edge_sel.report.records import RecordWriter

NULL_ENERGY = {"energy_j": None, "energy_source": None, "energy_method": None, "energy_coverage": None,
               "avg_power_w": None, "max_temp_c": None}


class NullMeter:
    """Used when energy is not measured at all (tests of the loop itself)."""
    total_j = 0.0

    def begin(self, name: str) -> None:
        pass

    def end(self, name: str) -> dict:
        return dict(NULL_ENERGY)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def snapshot_params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def changed_fraction(model: torch.nn.Module, before: list[torch.Tensor]) -> float:
    """Share of parameter entries whose value differs from `before`: what actually moved."""
    changed = sum((p.detach() != b).sum().item() for p, b in zip(model.parameters(), before))
    return changed / max(1, sum(b.numel() for b in before))


@dataclass
class Trainer:
    config: TrainConfig
    splits: Splits
    model: torch.nn.Module
    mean: list[float]
    std: list[float]
    device: torch.device
    generator: torch.Generator
    strategy: Strategy
    updater: Updater
    phase: str = "finetune"
    meter: object = field(default_factory=NullMeter)
    guard: object = None                 # ThermalGuard, or None
    budget_j: float | None = None        # stop cleanly before the measured total passes this
    quiet: bool = False
    records: list = field(default_factory=list)

    def __post_init__(self):
        cfg = self.config
        self.model.to(self.device)
        self.train_ds = self.splits.train.to(self.device)
        self.val_ds = self.splits.val.to(self.device)
        self.test_ds = self.splits.test.to(self.device)
        self.optimizer = make_optimizer(cfg.optimizer, self.model.parameters(), cfg.lr, cfg.momentum,
                                        cfg.weight_decay)
        self.ctx = RunContext(self.train_ds, self.val_ds, self.model, cfg.epochs, self.generator,
                              self.device, self.mean, self.std, cfg.batch_size, cfg.to_json(),
                              score_fn=self.score, forward_fn=self.forward_no_grad)
        self.backend = make_backend(cfg, self.model, self.optimizer, self.updater, self.device)
        self.loader = BatchLoader(self.train_ds, self.mean, self.std, cfg.batch_size, cfg.augment,
                                  self.generator)
        self.flops = FlopCounter(self.model, self.train_ds.input_shape)
        self._scoring = {"samples": 0, "flops": 0}
        self.step = 0
        self.stop_reason: str | None = None
        self._eval_j = 0.0          # last evaluation's joules, reserved when checking the budget
        self.strategy.setup(self.ctx)
        self.updater.attach(self.model, self.optimizer, self.ctx)
        self.class_names = self.train_ds.class_names

    def _bar(self, total, desc, leave):
        return tqdm(total=total, desc=desc, leave=leave, unit="batch" if not leave else "epoch",
                    disable=self.quiet or not sys.stderr.isatty(), dynamic_ncols=True)

    # -- scoring passes a strategy may ask for (counted, never free) --------------------------
    @torch.no_grad()
    def score(self, positions: torch.Tensor | None = None, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Per-sample losses of training samples under `model` (default: the live model), counted
        as a scoring pass in the current epoch's record."""
        model = model or self.model
        model.to(self.device).eval()
        ds = self.train_ds if positions is None else self.train_ds.subset(positions)
        logits = predict_dataset(lambda x: model(x).float(), ds, self.mean, self.std, self.config.eval_batch_size)
        counter = self.flops if model is self.model else FlopCounter(model, ds.input_shape)
        self._scoring["samples"] += len(ds)
        self._scoring["flops"] += self._eval_flops(counter, len(ds))
        return torch.nn.functional.cross_entropy(logits, ds.labels, reduction="none")

    @torch.no_grad()
    def forward_no_grad(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of one (augmented) batch in training mode without a graph, counted as a scoring
        pass: what the seed's two-pass gating spends to decide which rows of a batch to train."""
        self.model.train()
        logits = self.model(x).float()
        self._scoring["samples"] += len(x)
        self._scoring["flops"] += self.flops.eval_batch(len(x))
        return logits

    def _eval_flops(self, counter: FlopCounter, n: int) -> int:
        bs = self.config.eval_batch_size
        full, rest = divmod(n, bs)
        return full * (counter.eval_batch(bs) if full else 0) + (counter.eval_batch(rest) if rest else 0)

    # -- one epoch ---------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        cfg = self.config
        before = snapshot_params(self.model)
        # The epoch's time and energy include planning: selection overhead is part of the cost.
        self.meter.begin("train")
        t0 = time.perf_counter()
        plan = self.strategy.plan(epoch)
        n_plan = len(plan.positions)
        n_trained = 0
        nb = self.loader.num_batches(n_plan)
        emb = EmbarrassmentMeter(len(self.class_names), cfg.temperature, self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        flops_f = flops_b = 0
        last_loss = None
        throttled = 0.0
        start_j = self.meter.total_j
        bar = self._bar(nb, f"epoch {epoch}", leave=False)
        for i, batch in enumerate(self.loader.batches(plan.positions, plan.weights)):
            if self.guard is not None:
                throttled += self.guard.wait_if_hot()
            if self._over_budget(start_j, i):
                self.stop_reason = "energy_budget"
                break
            # Online gates may drop rows of a planned batch before its step (counted, see filter_batch).
            batch = self.strategy.filter_batch(batch)
            if batch is None or len(batch.y) == 0:
                bar.update(1)
                continue
            progress = (epoch + i / max(nb, 1)) / max(cfg.epochs, 1)
            scheduled = cfg.lr * lr_factor(cfg.schedule, progress, cfg.warmup_epochs / max(cfg.epochs, 1))
            lr = scheduled * self.strategy.lr_scale(last_loss)
            self.backend.set_lr(lr)
            self.ctx.state.update(epoch=epoch, step=self.step, lr=lr)
            self.updater.before_step(self.step, batch)
            f, b = self.flops.train_step(len(batch.y))
            losses, logits = self.backend.train_step(self.step, batch)
            self.strategy.observe(batch, losses, logits)
            emb.add(logits, batch.y)
            loss_sum += losses.sum()
            correct += (logits.argmax(1) == batch.y).sum()
            last_loss = losses.mean()
            n_trained += len(batch.y)
            flops_f += f
            flops_b += b
            self.step += 1
            bar.update(1)
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        energy = self.meter.end("train")
        record = {
            "epoch": epoch, "phase": self.phase, "stage": plan.info.get("stage"),
            "strategy": self.strategy.name, "samples_available": len(self.train_ds),
            "forward_samples": n_trained + self._scoring["samples"], "backward_samples": n_trained,
            "activation": n_trained / max(1, len(self.train_ds)),
            "train_loss": loss_sum.item() / n_trained if n_trained else None,
            "train_acc": correct.item() / n_trained if n_trained else None,
        }
        record.update(self.updater.end_epoch())
        record["params_updated_frac"] = changed_fraction(self.model, before)
        record.update({"flops_forward": flops_f, "flops_backward": flops_b,
                       "flops_scoring": self._scoring["flops"], "scoring_samples": self._scoring["samples"]})
        # An updater's one-off calibration pass (the SEL guilt threshold) is training compute too.
        record["flops_train"] = flops_f + flops_b + self._scoring["flops"] + (record.get("flops_calibration") or 0)
        self._scoring = {"samples": 0, "flops": 0}
        record.update({"wall_s": wall, "samples_per_s": n_trained / wall if wall > 0 else None,
                       "lr_end": self.optimizer.param_groups[0]["lr"]})
        record.update(energy)
        record.update(self.evaluate())
        e_values = emb.values()
        for name, e in zip(self.class_names, e_values):
            record[f"E_{name}"] = e
            record[f"C_{name}"] = EmbarrassmentMeter.confidence(e)
        record.update({k: v for k, v in plan.info.items() if k != "stage"})
        record["peak_rss_mb"] = peak_rss_mb()
        record["throttled_s"] = throttled
        if self.stop_reason:
            record["stop_reason"] = self.stop_reason
        return record

    def _over_budget(self, start_j: float, steps_done: int) -> bool:
        """Would one more step (at this epoch's mean cost so far) plus an evaluation pass the
        budget? Checked before each step, so the run stops before, not after, the limit."""
        if self.budget_j is None:
            return False
        total = self.meter.total_j
        per_step = (total - start_j) / steps_done if steps_done else 0.0
        return total + per_step + self._eval_j > self.budget_j

    def evaluate(self) -> dict:
        cfg = self.config
        self.meter.begin("eval")
        t0 = time.perf_counter()
        val_logits = predict_dataset(self.backend.predict, self.val_ds, self.mean, self.std, cfg.eval_batch_size)
        test_logits = predict_dataset(self.backend.predict, self.test_ds, self.mean, self.std, cfg.eval_batch_size)
        out = {"val_acc": accuracy(val_logits, self.val_ds.labels),
               "test_acc": accuracy(test_logits, self.test_ds.labels)}
        for name, acc in zip(self.class_names, per_class_accuracy(test_logits, self.test_ds.labels,
                                                                  len(self.class_names))):
            out[f"acc_{name}"] = acc
        out["flops_eval"] = self._eval_flops(self.flops, len(self.val_ds)) + \
            self._eval_flops(self.flops, len(self.test_ds))
        out["eval_wall_s"] = time.perf_counter() - t0
        out["eval_energy_j"] = self.meter.end("eval").get("energy_j")
        self._eval_j = out["eval_energy_j"] or 0.0
        return out

    def run(self, writer: RecordWriter | None = None, start_epoch: int = 0) -> list[dict]:
        bar = self._bar(self.config.epochs - start_epoch, self.phase, leave=True)
        for epoch in range(start_epoch, self.config.epochs):
            if self.strategy.finished():
                break
            record = self.train_epoch(epoch)
            record.update(self.strategy.end_epoch(epoch, record))
            self.records.append(record)
            if writer is not None:
                writer.append(record)
            bar.set_postfix(loss=f"{record['train_loss'] or 0:.3f}", val=f"{record['val_acc'] or 0:.3f}")
            bar.update(1)
            if self.stop_reason:
                break
        bar.close()
        return self.records
