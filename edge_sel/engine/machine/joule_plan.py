"""What trains under a memory budget, chosen by expected gain and the joules it costs on this device.

`--sparsity budget` compares candidates, each a trainable set with the cheapest-to-run step shape that
fits the budget (memory_plan.fit_shape: the whole batch, recomputed blocks, micro-batches):

- the sets the transfer bench runs as fixed methods: the classifier, BatchNorm and the classifier,
  biases and norms and the classifier, the last k blocks, MCUNetV3's sparse update, everything;
- TinyTL's lite residual branches with the biases (models/lite_residual.py);
- the set memory_plan.choose_trainable picks by gain per byte (Fisher-chosen tensors).

Each candidate carries three figures:
- counted MiB: the meta-device count of its real step (core/memory.py);
- estimated joules: the run's training steps x seconds per step x watts. Seconds per step are measured,
  a few real forward and backward passes of the candidate's shape (recomputation and micro-batches
  included) on the run's own images, kept per machine, model and shape in the probe cache
  (engine/machine/probe_cache.py) so a later start reads them; watts are what the run's meter measured
  (or estimated) over those passes. The optimizer's own step is not timed (it is the same order for
  every set and small beside backward);
- expected gain: what the checkpoint's server measured the set to gain from these weights, at the
  run's length (engine/loop/set_gains.py), where it shipped that; else the candidate's accuracy on
  held-out local images after a short trial of its own step (engine/loop/trial_gain.py). The squared
  gradients on the device's images (or the warmup's Fisher information) still choose the tensors of
  the gain-per-byte set and of the sparse update.

The rule: candidates over an --energy-budget or --time-budget are out: the estimate of their training
plus what the run spends besides (its evaluation passes timed here per image, and planning so far;
engine/loop/run_estimate.py), which is the same for every candidate;
of the rest, the one with the fewest joules among those as good as the leader (the most expected gain)
wins: as good means a deficit that a one-sided paired test on the same held-out images puts under
NEAR_POINTS, and never a point or more (core/evidence.py). A band in points, not a share of the
leader's accuracy: 90% of a 77% trial let a set 7 points behind pass as as good (Lite0 from ImageNet
at 128 px, docs/transfer.md); nor widened by the noise of a thin sample: "within one standard error"
let a one-image deficit through at any size and a 12.5-point one at 16 images. It is never dominated:
where a candidate with more gain costs no more joules, the most gaining of those wins. Every
candidate's figures and the reason go in the plan line and the plan's record.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

import torch

from edge_sel import huge_pages
from edge_sel.backends.torch_backend import freeze_batchnorm_stats
from edge_sel.core import measuring
from edge_sel.core.evidence import NEAR_POINTS, as_good
from edge_sel.core.memory import MiB, MemoryCount, StepShape
from edge_sel.core.micro_batches import bounds
from edge_sel.core.lean_saves import lean_key, lean_words, set_saves
from edge_sel.engine.machine import cpu_pool, peak_memory, probe_cache
from edge_sel.engine.machine.device import random_streams_kept

CACHE_FILE = "step-costs.json"
TIMED_STEPS = 2          # timed passes per candidate (the fastest counts), after one untimed pass overall
AGAIN_WITHIN = 1.25      # ... where its first is within this of the fastest candidate's first; else one


@dataclass
class Candidate:
    name: str
    trainable: set[str]
    gain: float = 0.0
    shape: StepShape | None = None
    count: MemoryCount | None = None
    shape_notes: list[str] = field(default_factory=list)
    step_s: float | None = None
    joules: float | None = None          # estimated, the run's training steps
    seconds: float | None = None         # estimated, the run's training steps
    out: str = ""                        # why it cannot be chosen ("" where it can)
    trial: dict | None = None            # its short trial's held-out figures (engine/loop/trial_gain.py)
    lr: float | None = None              # its recipe's learning rate (None: the run's)
    correct: torch.Tensor | None = None  # its trial's right (True) or wrong per held-out image, in order

    def summary(self, total_gain: float) -> dict:
        return {"name": self.name, "tensors": len(self.trainable),
                "counted_mb": None if self.count is None else round(self.count.peak / MiB, 1),
                "micro_batch": None if self.shape is None else self.shape.chunk,
                "recomputed_blocks": None if self.shape is None else len(self.shape.recompute),
                "bn_statistics": None if self.shape is None else self.shape.bn_statistics,
                "lean_saves": None if self.shape is None else (self.shape.lean if isinstance(self.shape.lean, bool)
                                                               else list(self.shape.lean)),
                "step_s": None if self.step_s is None else round(self.step_s, 4),
                "estimated_j": None if self.joules is None else round(self.joules, 1),
                "estimated_s": None if self.seconds is None else round(self.seconds, 1),
                # An accuracy: the held-out accuracy its trial or the server's recipe reached.
                "expected_acc": round(self.gain, 4),
                "share_of_leader": round(self.gain / total_gain, 4) if total_gain > 0 else 0.0,
                "trial": self.trial, "out": self.out or None}

    def words(self, total_gain: float) -> str:
        s = self.summary(total_gain)
        if self.count is None:
            return f"{self.name} ({self.out})"
        how = (f"micro-batch {s['micro_batch']}" + (f", {lean_words(self.shape.lean)}" if self.shape.lean else "")
               + (f", {s['recomputed_blocks']} recomputed" if s["recomputed_blocks"] else "")
               + (", statistics frozen" if s["bn_statistics"] == "frozen" else ", statistics re-estimated"))
        joules = "?" if s["estimated_j"] is None else f"{s['estimated_j']:,.0f} J"
        return (f"{self.name} {s['counted_mb']:.1f} MiB ({how}) {joules} expected {s['expected_acc']:.1%}"
                + (f" [{self.out}]" if self.out else ""))


def choose(candidates: list[Candidate], energy_j: float | None = None, time_s: float | None = None,
           besides_j: float = 0.0, besides_s: float = 0.0) -> tuple[Candidate, str]:
    """The winner among candidates that fit (count not None) and its reason (see the module's rule).
    `besides_j`, `besides_s`: what the run spends besides training (its evaluation and planning,
    engine/loop/run_estimate.py), the same for every candidate, counted against the limits."""
    fitting = [c for c in candidates if c.count is not None]
    if not fitting:
        raise ValueError("no candidate fits")
    besides = " with the run's evaluation and planning" if besides_j or besides_s else ""
    for c in fitting:
        if energy_j is not None and c.joules is not None and c.joules + besides_j > energy_j:
            c.out = f"over the {energy_j:,.0f} J budget{besides}"
        elif time_s is not None and c.seconds is not None and c.seconds + besides_s > time_s:
            c.out = f"over the {time_s:,.0f} s budget{besides}"
    within = [c for c in fitting if not c.out]
    if not within:          # no candidate meets the limit: the cheapest comes nearest
        best = min(fitting, key=_cost)
        return best, f"no candidate fits the limit; {best.name} costs the fewest joules"
    leader = max(within, key=lambda c: (c.gain, -_cost(c)))
    near = [c for c in within if as_good(leader, c)]
    best = min(near, key=lambda c: (_cost(c), -c.gain))
    # Never dominated: of the candidates that gain more at no more joules, the most gaining.
    best = max((c for c in within if _cost(c) <= _cost(best)), key=lambda c: (c.gain, -_cost(c)))
    if best is leader:
        cheaper = [c for c in within if _cost(c) < _cost(best)]
        return best, ("the most expected gain; none that costs fewer joules is as good (a deficit a paired test "
                      f"puts under {NEAR_POINTS * 100:.1f} point)" if cheaper else
                      "the most expected gain at the fewest joules")
    return best, (f"as good as the most expected gain ({leader.name}; {best.name}'s {(best.gain - leader.gain) * 100:+.1f} "
                  f"points, which a paired test puts under {NEAR_POINTS * 100:.1f}) at the fewest joules")


# Why a candidate is not timed: not provably as good as the leader (it may still not be resolvably
# behind it: engine/loop/device_race.py races such a one).
OUTSIDE_BAND = "not timed: its expected gain is outside the band of the most expected gain"


def outside_band(candidates: list[Candidate]) -> list[Candidate]:
    """The fitting candidates that cannot win on gain alone: outside the band of the most gaining
    fitting one (whatever the joules, the winner is within it)."""
    fitting = [c for c in candidates if c.count is not None and not c.out]
    if not fitting:
        return []
    leader = max(fitting, key=lambda c: c.gain)
    return [c for c in fitting if not as_good(leader, c)]


def _cost(c: Candidate) -> float:
    return c.joules if c.joules is not None else (c.seconds if c.seconds is not None else math.inf)


def shape_key(model, input_shape, shape: StepShape, trainable: set[str], device) -> str:
    names = sorted(trainable)
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]
    return "|".join(map(str, (probe_cache.machine_key(device), probe_cache.model_key(model, "plan"),
                              tuple(input_shape), shape.batch_size, shape.chunk, len(shape.recompute),
                              shape.bn_statistics, digest, huge_pages_key(), *lean_key(shape.lean),
                              *allocator_key())))


def allocator_key() -> tuple[str, ...]:
    """Steps timed with the pool of freed pages (cpu_pool.py) reuse what the step before freed and run
    faster under a budget: their timings are kept apart from glibc's unmapping ones (whose keys stay as
    they were), and from those of the pool before it cut blocks from larger free ranges (slower:
    "glibc, freed blocks pooled")."""
    name = peak_memory.allocator_name()
    if name == "glibc" and cpu_pool.loaded():
        return ("glibc, freed pages pooled and cut",)
    return () if name == "glibc" else (name,)


def huge_pages_key() -> str:
    """Steps timed with torch's large CPU blocks on huge pages run faster (edge_sel/huge_pages.py):
    timings taken without are not read back with, nor the other way."""
    return f"huge pages {'on' if huge_pages.describe()['on'] else 'off'}"


def time_step(model, x: torch.Tensor, y: torch.Tensor, shape: StepShape, trainable: set[str], losses) -> None:
    """One forward and backward of a step of `shape` training `trainable` (no optimizer step), in the
    trainer's near-even micro-batches."""
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    set_saves(model, shape.recompute, shape.lean)
    model.train()
    if shape.bn_statistics == "frozen":
        freeze_batchnorm_stats(model)
    try:
        for lo, hi in bounds(len(y), shape.chunk):
            losses(model(x[lo:hi]), y[lo:hi]).mean().backward()
    finally:
        model.zero_grad(set_to_none=True)
        set_saves(model)


def evaluation_key(model, x: torch.Tensor, device, precision: str) -> str:
    return "|".join(map(str, (probe_cache.machine_key(device), probe_cache.model_key(model, "plan-eval"),
                              tuple(x.shape), precision, huge_pages_key())))


def time_forward(model, x: torch.Tensor, context) -> None:
    """One forward-only pass in inference mode, as evaluation runs it (`context`: its autocast)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), context():
            model(x)
    finally:
        model.train(was_training)


def measure_costs(candidates: list[Candidate], model, x, y, losses, device, steps: int, meter=None,
                  evaluation=None) -> dict:
    """Each fitting candidate's seconds per step (from the cache, else timed) and its run's estimated
    joules and seconds; returns what the probe cost and the watts it used. `evaluation`: (precision,
    autocast context, batch) of the run's forward-only passes, which are then timed too (seconds per
    image) at that batch, the most the budget lets them hold: a larger one loads kernels for a shape
    the run never runs (Lite0 at 1/10 on a cold cache: 15 MiB more, and the plan was refused)."""
    todo, entries = [], {}
    ex = None if evaluation is None else x[:max(1, min(len(x), evaluation[2]))]
    eval_key = None if evaluation is None else evaluation_key(model, ex, device, evaluation[0])
    eval_entry = None if eval_key is None else probe_cache.usable_entry(CACHE_FILE, eval_key)
    if eval_entry is not None and not probe_cache.positive(eval_entry.get("s_per_image")):
        eval_entry = None
    eval_timed = None
    for c in candidates:
        if c.count is None:
            continue
        key = shape_key(model, x.shape[1:], c.shape, c.trainable, device)
        entry = probe_cache.usable_entry(CACHE_FILE, key)
        if entry is not None and probe_cache.positive(entry.get("step_s")):
            entries[c.name] = entry
        else:
            todo.append((c, key))
    wall, energy = 0.0, None
    if todo or (eval_key is not None and eval_entry is None):
        measuring.need("step costs")        # timed in a child where the run may not (core/measuring.py)
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        state = {k: v.clone() for k, v in model.state_dict().items()}     # BatchNorm statistics move in train mode
        if meter is not None:
            meter.begin("plan-probe")
        t0 = time.perf_counter()
        try:
            with random_streams_kept(x.device), probe_cache.OtherLoad() as load, peak_memory.pooled_while_timing():
                if todo:
                    time_step(model, x, y, todo[0][0].shape, todo[0][0].trainable, losses)  # untimed: first-call costs
                timed = {}
                if eval_key is not None and eval_entry is None:
                    time_forward(model, ex, evaluation[1])       # untimed, as above
                    eval_timed = min(_timed(time_forward, model, ex, evaluation[1]) for _ in range(TIMED_STEPS))
                for c, key in todo:
                    timed[c.name] = (key, _timed(time_step, model, x, y, c.shape, c.trainable, losses))
                # Passes again only for the candidates near the fastest: one far slower cannot be the
                # cheapest, and its passes were most of the probe (Lite0 at 1/4: 2.3 s a pass for the
                # recomputed sets against 0.5 for the classifier).
                fastest = min((step_s for _, step_s in timed.values()), default=0.0)
                for c, key in todo:
                    if timed[c.name][1] <= AGAIN_WITHIN * fastest:
                        again = min(_timed(time_step, model, x, y, c.shape, c.trainable, losses)
                                    for _ in range(TIMED_STEPS - 1))
                        timed[c.name] = (key, min(timed[c.name][1], again))
        finally:
            wall = time.perf_counter() - t0
            if meter is not None:
                energy = (meter.end("plan-probe") or {}).get("energy_j")
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
            model.load_state_dict(state)
        watts = energy / wall if energy and wall > 0 else None
        for name, (key, step_s) in timed.items():
            entries[name] = probe_cache.keep(CACHE_FILE, key, {"step_s": step_s, "watts": watts}, load.cpus)
        if eval_timed is not None:
            eval_entry = probe_cache.keep(CACHE_FILE, eval_key, {"s_per_image": eval_timed / len(ex), "watts": watts},
                                          load.cpus)
    watts_seen = [e.get("watts") for e in [*entries.values(), eval_entry or {}] if probe_cache.positive(e.get("watts"))]
    watts = max(watts_seen) if watts_seen else None
    for c in candidates:
        entry = entries.get(c.name)
        if entry is None:
            continue
        c.step_s = float(entry["step_s"])
        c.seconds = c.step_s * steps
        c.joules = None if watts is None else c.seconds * watts
    return {"probe_wall_s": round(wall, 3), "probe_energy_j": energy, "watts": watts,
            "timed": len(todo), "cached": len(entries) - len(todo),
            **({} if eval_entry is None else {"eval_s_per_image": eval_entry["s_per_image"],
                                              "eval_timed": eval_timed is not None})}


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def plan_words(candidates: list[Candidate], winner: Candidate, reason: str) -> str:
    total = max((c.gain for c in candidates), default=0.0)
    return (f"chose {winner.name}: {reason}; candidates (counted MiB, estimated training joules, expected held-out "
            f"accuracy): " + "; ".join(c.words(total) for c in candidates))
