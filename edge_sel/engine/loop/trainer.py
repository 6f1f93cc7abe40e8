"""The one training loop: strategy plan -> batches -> backend step -> observations -> records."""

from __future__ import annotations

import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from edge_sel.backends import make_backend
from edge_sel.backends.torch_backend import make_optimizer
from edge_sel.config import TrainConfig
from edge_sel.core.flops import FlopCounter
from edge_sel.core.records import RecordWriter
from edge_sel.data import BatchLoader, Splits
from edge_sel.energy.base import NullMeter
from edge_sel.engine import faults
from edge_sel.engine.evaluation.evaluate import EmbarrassmentMeter, EvaluationSets
from edge_sel.engine.evaluation.keep import WARMUP_EPOCH, ModelChoice
from edge_sel.engine.levers.guard_set import evaluated_guard, run_guard_set
from edge_sel.engine.levers.levers import make_objective, make_replay
from edge_sel.engine.loop import epoch_record
from edge_sel.engine.loop.bank_passes import bank_selecting, charge_bank, metered, predict_selected
from edge_sel.engine.loop.bn_adapt_epoch import adapt_bn, bn_adapt_record, consider_bn_adapted
from edge_sel.engine.loop.budget import STOPS, RunBudget
from edge_sel.engine.loop.checkpointing import Checkpoints, Rollback, restore
from edge_sel.engine.loop.end_of_run import evaluate_at_the_end
from edge_sel.engine.loop.default_choice import choose_default
from edge_sel.engine.loop.ledger import ComputeLedger
from edge_sel.engine.loop.progress import EpochProgress, changed_fraction, snapshot_params
from edge_sel.engine.loop.memory_records import RunMemory
from edge_sel.engine.loop.progress_log import ProgressLog, image_bar, progress_bar
from edge_sel.engine.loop.schedule import lr_factor
from edge_sel.engine.loop.scoring import ScoringPasses
from edge_sel.engine.loop.single_rows import refuse_batches_of_one, rows_to_train, trains_batchnorm_statistics
from edge_sel.engine.loop.step_memory import allocator_while_training, memory_counter, moving_state, plan_run_memory
from edge_sel.engine.loop.start import start_at_chance, start_record
from edge_sel.engine.loop.totals import StepTotals
from edge_sel.engine.loop.val_size import validates_epoch, validation_set
from edge_sel.engine.machine import cuda_workspace
from edge_sel.engine.machine.precision import autocast
from edge_sel.engine.machine.run_choices import run_layout, run_precision, trains_key
from edge_sel.methods import RunContext, Strategy, Updater

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
    state_dir: Path | None = None        # where full-state checkpoints go (None: none are written)
    checkpoint_every: int = 0            # steps between mid-epoch checkpoints (0: epoch ends only)
    baseline: dict | None = None         # the starting checkpoint evaluated before the first step (finetune)
    ranks: object = None                 # engine.runs.ddp.RankSync under torchrun; None in a single process
    memory: object = None                # engine.levers.anchors.Memory: the checkpoint's anchors, Fisher, source weights
    bank: object = None                  # engine.evaluation.bn_bank.ConditionBank under --bn-conditions
    bank_setup: dict | None = None       # what matching tonight's images to the bank cost (charged to the baseline)
    set_gains: dict | None = None        # the checkpoint's, the planner's expected gains (engine/loop/set_gains.py)
    pretrained_start: bool = False       # the warmup grew from published weights (default_choice's prior)
    untrained_head: bool = False         # no epoch trained the checkpoint's classifier (engine/loop/start.py)

    def __post_init__(self):
        cfg = self.config
        self.budget = RunBudget(self.budget_j, cfg.time_budget_s)     # the probes and plan below are the run's time
        refuse_batches_of_one(cfg.batch_size, self.model, cfg.bn_mode)
        getattr(self.updater, "prepare", lambda *_: None)(self.model, self.splits.train.input_shape)  # lite residuals
        self.cuda_workspaces = cuda_workspace.small_for_budget(self.device, cfg.memory_budget_mb)  # before a GPU pass
        self.model.to(self.device)
        self.train_ds, self.val_ds = self.splits.train.to(self.device), self.splits.val.to(self.device)
        self.test_ds = self.splits.test.to(self.device)
        self.clean_test_ds = None if self.splits.test_clean is None else self.splits.test_clean.to(self.device)
        self.reads_validation = bool(getattr(self.strategy, "reads_validation", False))   # stage gates
        self.default_choice = choose_default(self)     # --sparsity auto: what trains, its statistics and rate
        # --val-subset N, or N sized for a device (val_share) to the step the run trains: kept in the
        # config, as what ran.
        trains = getattr(self.updater, "trainable", None)
        self.val_eval_ds, self.val_size_choice = validation_set(cfg, self.phase, self.train_ds, self.val_ds, self.model,
                                                                self.memory, trains and trains(self.model),
                                                                self.reads_validation, not start_at_chance(self))
        # The guard anchors each validation evaluates (sized with it) and the source's accuracy on them.
        self.guard_anchors = run_guard_set(self.memory, cfg, self.phase)
        self.layout = run_layout(cfg, self.model, self.train_ds, max(len(self.val_eval_ds), len(self.test_ds), 1),
                                 self.device, trains_key(self.updater, cfg))
        self.memory_format, self.eval_batch_size = self.layout.format, self.layout.eval_batch_size
        # The config says what ran (config.json, a resume, a rerun): measured choices become given.
        cfg.memory_format, cfg.eval_batch_size = self.layout.memory_format, self.eval_batch_size
        self.model.to(memory_format=self.memory_format)
        self.precision = run_precision(cfg, self.model, self.train_ds, self.val_eval_ds, self.mean, self.std,
                                       self.device, self.memory_format, self.eval_batch_size, trains_key(self.updater, cfg))
        cfg.precision, cfg.eval_precision = self.precision.train, self.precision.eval
        self.sync_every = cfg.sync_every or (1 if self.device.type == "cpu" else 32)
        self.totals = StepTotals(self.device)
        self.optimizer = make_optimizer(cfg.optimizer, self.model.parameters(), cfg.lr, cfg.momentum,
                                        cfg.weight_decay)
        self.flops = FlopCounter(self.model, self.train_ds.input_shape)
        self.memory_counter, self.step_shape = memory_counter(cfg, self.model, self.train_ds.input_shape, self.device)
        self.run_memory = RunMemory(self)       # counted and measured memory in the records
        self.ledger = ComputeLedger()       # scoring passes and rolled-back steps not yet in a record
        self.scoring = ScoringPasses(self.model, self.train_ds, self.mean, self.std, self.device,
                                     self.eval_batch_size, self.memory_format, self.flops, self.ledger,
                                     cfg.bn_mode, self.eval_autocast)
        # With the checkpoint's source memory, every validation also measures forgetting on the guard anchors.
        self.eval_sets = EvaluationSets(self.val_eval_ds, self.test_ds, self.clean_test_ds, self.mean, self.std,
                                        self.eval_batch_size, self.memory_format, self.flops,
                                        self.train_ds.class_names, *evaluated_guard(self.guard_anchors, self.device))
        self.ctx = RunContext(self.train_ds, self.val_ds, self.model, cfg.epochs, self.generator,
                              self.device, self.mean, self.std, cfg.batch_size, cfg.to_json(),
                              score_fn=self.scoring.losses, forward_fn=self.scoring.batch_logits,
                              charge_fn=self.ledger.add_scoring)
        # What a step minimises, and anchors mixed into its batches (levers against forgetting).
        self.objective = make_objective(cfg, self.model, self.memory)
        self.replay = make_replay(cfg, self.memory, self.device, self.mean, self.std, self.memory_format)
        self.backend = make_backend(cfg, self.model, self.optimizer, self.updater, self.device, self.objective)
        self.loader = BatchLoader(self.train_ds, self.mean, self.std, cfg.batch_size, cfg.augment,
                                  self.generator, self.memory_format, augment_seed=cfg.seed)
        self.checkpoints = Checkpoints(self.state_dir, self.ranks)
        self.step = self.next_epoch = 0
        self.stop_reason: str | None = None
        self.stop_requested = False     # set by SIGINT/SIGTERM: finish the step, checkpoint, stop
        self.lr_mult, self.nonfinite_events = 1.0, 0        # halved after each non-finite loss
        self.bn_adapt_done, self.bn_adapt_pending = False, None   # pending: re-estimation not yet charged to a record
        self._kill_at_step = int(os.environ.get("EDGE_SEL_FAULT_KILL_AT_STEP", "0") or 0) or None
        self.progress: EpochProgress | None = None   # the epoch under way (saved by mid-epoch checkpoints)
        self.last_eval_energy: dict = {}
        if self.guard is not None:
            self.guard.should_stop = lambda: self.stop_requested
        # Pretraining starts from random weights: only a fine-tune has a starting model worth keeping.
        self.choice = ModelChoice(cfg.keep if self.phase == "finetune" else "last", cfg.max_forgetting,
                                  self.memory is not None, self.eval_sets.source_anchor_acc)
        self.memory_plan = plan_run_memory(self)       # under --memory-budget: before what trains is fixed
        self.single_rows_train = not trains_batchnorm_statistics(self.model, self.backend.bn_mode)
        self.strategy.setup(self.ctx)
        self.updater.attach(self.model, self.optimizer, self.ctx)
        self.choice.keys = moving_state(self)      # what --keep best copies: what training can move
        self.class_names = self.train_ds.class_names
        self.log = ProgressLog(self.quiet or (self.ranks is not None and not self.ranks.evaluates), cfg.epochs)
        self.log.unvalidated(self.val_size_choice)

    def eval_autocast(self):
        return autocast(self.device, self.precision.eval)

    # -- one epoch ---------------------------------------------------------------------------
    def _begin_epoch(self, epoch: int) -> EpochProgress:
        plan = self.strategy.plan(epoch)
        return EpochProgress(epoch, plan, snapshot_params(self.model, self.updater.static_set),
                             EmbarrassmentMeter(len(self.class_names), self.config.temperature, self.device))

    def train_epoch(self, epoch: int, progress: EpochProgress | None = None) -> dict | None:
        """Train one epoch (or finish a resumed one) and return its record; None when stopped by a
        signal mid-epoch (the state is checkpointed and a resume completes the epoch)."""
        cfg = self.config
        # The epoch's time and energy include planning (a default choice's in the first epoch trained here only).
        self.meter.begin("train")
        self.run_memory.begin_epoch()
        t0 = time.perf_counter()
        j0, s0 = self.meter.total_j, self.budget.clock()
        if progress is None:
            if cfg.bn_adapt and not self.bn_adapt_done:
                adapt_bn(self)              # inside the first epoch's window, before it plans
                if self.phase == "finetune" and self.choice.mode == "best":
                    t0 += consider_bn_adapted(self)   # its evaluation is not training time
            progress = self._begin_epoch(epoch)
            progress.add_planning(getattr(self, "memory_plan_cost", None), (self.default_choice or {}).pop("cost", None))
        self.progress = progress
        self.loader.epoch = epoch       # augmentation is drawn per (seed, epoch, sample)
        plan = progress.plan
        nb = self.loader.num_batches(len(plan.positions))
        bar = progress_bar(nb, f"epoch {epoch}", False, self.quiet)
        bar.update(progress.next_batch)
        start = progress.next_batch * cfg.batch_size
        first = progress.next_batch
        for i, batch in enumerate(self.loader.batches(plan.positions, plan.weights, start=start),
                                  start=progress.next_batch):
            if self.guard is not None:
                progress.throttled += self.guard.wait_if_hot()
                progress.thermal_capped += int(self.guard.last_capped)
                if self.stop_requested:          # SIGTERM while cooling down
                    self.stop_reason = "interrupted"
                    break
            if passed := self.budget.passed_by_next_step(self.meter, j0, s0, i - first):
                self.stop_reason = passed
                break
            batch = rows_to_train(progress, batch, self.strategy.filter_batch, self.single_rows_train)
            stepped = batch is not None
            if stepped:
                self._train_step(epoch, i, nb, batch, progress)
            progress.next_batch = i + 1
            bar.update(1)
            if self.stop_requested:
                self.stop_reason = "interrupted"
                break
            if self.checkpoint_every and stepped and self.step % self.checkpoint_every == 0 \
                    and progress.next_batch < nb:
                self.checkpoints.save_mid_epoch(self, progress, t0, j0)
            if stepped and self.step == self._kill_at_step:     # crash-safety tests: die like a power cut
                os.kill(os.getpid(), signal.SIGKILL)
            if stepped:
                faults.point(f"step-{self.step}")
        bar.close()
        self.read_totals(progress, f"the end of epoch {epoch}")
        if self.device.type == "cuda":
            torch.cuda.synchronize()        # the epoch's wall time includes its queued kernels
        if self.stop_reason == "interrupted":
            self.checkpoints.save_mid_epoch(self, progress, t0, j0)
            self.meter.end("train")
            return None
        if progress.carry is not None and progress.next_batch >= nb:
            progress.singles_dropped += len(progress.carry)     # nothing left to join: not trained
            progress.carry = None
        progress.wall_s += time.perf_counter() - t0
        energy = self.meter.end("train")
        if energy.get("energy_j") is not None:
            energy["energy_j"] += progress.energy_j
            candidate = (self.bn_adapt_pending or {}).get("candidate_eval") or {}
            energy["energy_j"] -= candidate.get("eval_energy_j") or 0.0    # evaluation joules, counted there
        self.progress = None
        if self.ranks is not None:       # DDP: this rank's counters and joules become world totals
            self.ranks.combine_epoch(progress, energy, self.ledger.scoring)
        return self._epoch_record(epoch, progress, energy)

    def _train_step(self, epoch: int, i: int, nb: int, batch, progress: EpochProgress) -> None:
        cfg = self.config
        progress_frac = (epoch + i / max(nb, 1)) / max(cfg.epochs, 1)
        scheduled = cfg.lr * lr_factor(cfg.schedule, progress_frac, cfg.warmup_epochs / max(cfg.epochs, 1))
        last = progress.last_loss_t
        if last is None and progress.last_loss is not None:     # a resumed epoch
            last = torch.tensor(progress.last_loss)
        lr = scheduled * self.strategy.lr_scale(last) * self.lr_mult
        self.backend.set_lr(lr)
        self.ctx.state.update(epoch=epoch, step=self.step, lr=lr)
        local = batch       # the strategy's rows: what it, the loss sums and per-class statistics see
        if self.replay is not None:
            batch = self.replay.append(local, epoch, self.step)
        self.updater.before_step(self.step, batch)
        self.run_memory.observe(progress, len(batch.y))
        f, b = self.flops.train_step(len(batch.y), self.step_shape.micro_batch)
        p = self.objective.penalty_flops()      # after before_step: only what trains is penalised
        losses, logits = self.backend.train_step(self.step, batch)
        self.ledger.add_step(len(batch.y), f + b + p)
        n = len(local.y)
        losses, logits = losses[:n], logits[:n]
        self.totals.add(losses, logits, local.y)
        progress.last_loss_t = self.totals.last
        if self.totals.pending >= self.sync_every:
            self.read_totals(progress, f"epoch {epoch}, batch {i}")
        self.strategy.observe(local, losses, logits)
        progress.emb.add(logits, local.y)
        progress.n_trained += n
        progress.replay_samples += len(batch.y) - n
        progress.steps += 1
        progress.flops_f += f
        progress.flops_b += b
        progress.flops_penalty += p
        self.step += 1

    def read_totals(self, progress: EpochProgress, where: str) -> None:
        """The one host read of the steps since the last: sums into the progress, and a rollback
        when any loss among them was not finite (the steps after it are thrown away with it)."""
        if not self.totals.pending:
            return
        loss_sum, correct, bad, last = self.totals.read()
        if self.ranks is not None:      # DDP: every rank rolls back when one saw a non-finite loss
            bad = self.ranks.any_rank(bad)
        if bad:
            raise Rollback(f"non-finite loss by {where}")
        progress.loss_sum += loss_sum
        progress.correct += correct
        progress.last_loss = last

    def _epoch_record(self, epoch: int, progress: EpochProgress, energy: dict) -> dict:
        """What the epoch trained and cost (the ledger's charges taken), its evaluation, its closing
        counters; the fields themselves are engine/loop/epoch_record.py's."""
        scoring = self.ledger.take_scoring()
        record = epoch_record.training_fields(epoch, self.phase, self.strategy.name, len(self.train_ds),
                                              progress, scoring)
        record.update(epoch_record.stream_fields(self.train_ds, progress.plan.positions))
        record.update(self.updater.end_epoch())
        record.update(params_updated_frac=changed_fraction(self.model, progress.before), **epoch_record.bn_fields(self))
        bn_adapt, self.bn_adapt_pending = self.bn_adapt_pending, None
        candidate_eval = None if bn_adapt is None else bn_adapt.pop("candidate_eval", None)
        group = self.optimizer.param_groups[0]
        epoch_record.add_costs(record, progress, scoring, bn_adapt, self.ledger.take_rolled_back(), energy,
                               lr_end=group["lr"] / group.get("lr_scale", 1.0))
        record.update(epoch_record.lever_fields(progress, self.replay is not None, bool(self.objective.penalties)))
        record.update(self.run_memory.epoch_fields(progress, record))
        final = epoch == self.config.epochs - 1 or self.stop_reason is not None
        validate = validates_epoch(self.config, self.phase, epoch, final, self.reads_validation)
        record.update(self.evaluate(validate=validate, test=final or (validate and self.config.eval_test == "every")))
        epoch_record.add_candidate_evaluation(record, candidate_eval)
        record.update(epoch_record.closing_fields(progress, self.class_names, self.nonfinite_events,
                                                  self.stop_reason))
        return record

    def evaluate(self, validate: bool = True, test: bool = True, bar: str | None = None) -> dict:
        """The evaluation sets' accuracies (engine/evaluation/evaluate.py) with the pass's wall time and joules;
        the run's budget reserves the final evaluation from what this one cost. Under
        --bn-conditions the bank's statistics are first re-estimated for the current weights and each
        batch is normalised with its condition's (both counted in flops_eval). `bar`: a terminal's bar."""
        if self.ranks is not None and not self.ranks.evaluates:    # DDP: rank 0 evaluates (and writes)
            validate = test = False
        with metered(self) as took, image_bar(bar if validate or test else None, self.eval_sets.final_images(), self.quiet) as counted:
            with (bank_selecting(self) if validate or test else nullcontext()) as refreshed:
                predict = self.backend.predict if refreshed is None else partial(predict_selected, self)
                out = self.eval_sets.accuracies(counted(predict), validate, test)
            if refreshed is not None:
                charge_bank(self, out, refreshed)
        out["eval_wall_s"] = took["wall"]
        self.last_eval_energy = took["energy"]
        out["eval_energy_j"] = self.last_eval_energy.get("energy_j")
        # The end also tests the kept weights when they are not the last epoch's: reserved too.
        kept_test = len(self.test_ds) if self.phase == "finetune" and self.choice.mode == "best" else 0
        images = out["val_samples_evaluated"] + out["test_samples_evaluated"] + out.get("anchor_samples_evaluated", 0)
        out.update(self.run_memory.evaluation_fields(took["memory_mb"], out))
        self.budget.reserve_evaluation(out["eval_energy_j"], out["eval_wall_s"], images,
                                       self.eval_sets.final_images() + kept_test)
        return out

    def keep_choice(self, epoch: int, record: dict) -> None:
        if record.get("evaluated") == "none" and len(self.val_eval_ds):
            return          # not validated this epoch (--eval-every): nothing to choose by
        self.choice.consider(epoch, record.get("val_acc"), record.get("test_acc"), self.model,
                             record.get("anchor_acc"), self.eval_sets.val_right)
        if self.phase == "finetune":
            record["kept_epoch"] = self.choice.epoch     # what the output model would be if the run ended here

    def run(self, writer: RecordWriter | None = None, resume: dict | None = None) -> list[dict]:
        """Train to the end (or a stop); `resume` is a saved state to continue from."""
        with allocator_while_training(self):
            return self._run(writer, resume)

    def _run(self, writer: RecordWriter | None, resume: dict | None) -> list[dict]:
        self.next_epoch = 0
        if resume is not None:
            restore(self, resume)
        else:
            if self.phase == "finetune" and self.config.evaluate_start:
                self.baseline = start_record(self)
                if "start_at_chance" not in self.baseline:         # a start at chance is no candidate
                    self.keep_choice(WARMUP_EPOCH, self.baseline)
            self.checkpoints.save(self)        # a rollback target before the first step
            if self.baseline is not None:
                self.log.baseline(self.baseline)
            if writer is not None and self.baseline is not None:
                writer.append(self.baseline)
            if self.config.bn_adapt and self.config.epochs == 0:
                record = bn_adapt_record(self)
                self.keep_choice(0, record)
                self.records.append(record)
                self.checkpoints.save(self)
                if writer is not None:
                    writer.append(record)
        bar = progress_bar(self.config.epochs, self.phase, True, self.quiet)
        bar.update(self.next_epoch)
        # A run restored after its energy- or time-budget stop has no epoch left: it only writes its outputs.
        while self.next_epoch < self.config.epochs and not self.strategy.finished() \
                and self.stop_reason not in STOPS:
            epoch = self.next_epoch
            try:
                record = self.train_epoch(epoch, self.progress)
            except Rollback as e:
                self.checkpoints.roll_back(self, str(e))
                continue
            if record is None:       # interrupted mid-epoch, state saved
                break
            record.update(self.strategy.end_epoch(epoch, record))
            self.keep_choice(epoch, record)
            self.records.append(record)
            self.next_epoch = epoch + 1
            self.checkpoints.save(self)        # before the record is appended: a resume rewrites the records
            if self.next_epoch >= self.config.epochs or self.stop_reason or self.strategy.finished():
                faults.point("last-state")
            if writer is not None:
                writer.append(record)
            self.log.epoch(record)
            bar.set_postfix(loss=f"{record['train_loss'] or 0:.3f}", val=f"{record['val_acc'] or 0:.3f}")
            bar.update(1)
            if self.stop_reason or self.stop_requested:
                self.stop_reason = self.stop_reason or "interrupted"
                break
        bar.close()
        if self.progress is None:        # not stopped mid-epoch (a resume finishes that epoch)
            evaluate_at_the_end(self, writer)
            faults.point("tested")
        return self.records
