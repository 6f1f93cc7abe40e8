"""`edge-sel bench transfer`: the field's transfer protocol (reference/transfer-anchors.md) on the
device's side: from a warmup (or ImageNet weights with a fresh head) to the device's shard of the data
at device resolution, under one condition (clean, or a corruption of bench adapt's scenarios).

Per seed the start is evaluated once (a fine-tune of no epoch: its accuracy on the device's condition
and on clean data), then every method fine-tunes from it, each in a process of its own as bench
memory runs them (the measured peak is the run's own), without evaluating the start again. The
methods: full fine-tuning; the classifier; BatchNorm and the classifier; biases, BatchNorm and the
classifier; the last k blocks; a sparse update in MCUNetV3's shape (every bias and norm and the
classifier, and the weights of the blocks the warmup's Fisher information rates highest per parameter,
up to a tenth of the parameters; methods/update/fixed_sets.py's sparse_names, run as a memory plan
that trains that set); the planner (`--sparsity budget`) at 1/4, 1/10 and 1/30 of full fine-tuning's
counted peak; Sundew and random gating at activation 0.4; the SEL curriculum and its random-difficulty
control. Seeds pair as in bench adapt: the same start, split, corrupted images and data order per seed.

Every row names what it does with the BatchNorm running statistics (core/bn_stats.py): the trained
sets run as the field defines them, with the statistics frozen (TinyTL's FT-Last and FT-Norm+Last move
none), and again with them re-estimated (`SET/reestimate`); AdaBN re-estimates the statistics alone
with no training; the cheapest trained set (the classifier) runs with statistics per condition; full
fine-tuning, the planner, the gates and the curricula re-estimate them as they always have.

A budgeted run that refuses its budget before its first step (it also counts what the process grew by
before that step, which the bench's count cannot) is named under "refused", not a row, and the bench
goes on; any other failure of a run ends the bench.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from edge_sel.bench.adapt import SCENARIOS, outcome
from edge_sel.bench.bench_run import RAN, STOPPED, run_one
from edge_sel.bench.memory import SAME_NUMERICS, MemoryModel, parse_methods, run_name, run_result
from edge_sel.bench.stopping import BenchStop
from edge_sel.config import TrainConfig
from edge_sel.core import bn_stats
from edge_sel.core.checkpoint import read_card
from edge_sel.core.memory import MiB
from edge_sel.core.source_memory import read_source_memory
from edge_sel.engine.machine.memory_plan import RESERVE, plan_memory
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import pretrain
from edge_sel.methods.update.fixed_sets import sparse_names

# "contrast": a camera the clean server never saw (CIFAR-10-C's contrast at severity 4), on which a
# device must confirm the server's recipes (engine/loop/device_race.py).
CONDITIONS = {"clean": None, **SCENARIOS, "contrast": "corrupt=contrast:4"}
FRACTIONS = ("1/4", "1/10", "1/30")
ACTIVATION = 0.4
# The sparse update's weights hold at most this share of the parameters (MCUNetV3 searched its set
# under a memory budget; here the set is fixed by the warmup's Fisher information, before any run).
SPARSE_SHARE = 0.1
REFERENCE = "full FT"
START = "start"
DEFAULT = "default"
FROZEN, REESTIMATE, PER_CONDITION = bn_stats.BN_STATS
ADABN = "adabn"
# The trained sets the field runs with frozen statistics; each also runs as SET/reestimate.
FROZEN_SETS = ("classifier", "bn+classifier", "bias+bn+classifier", "last-k", "sparse")
# The bench's own start ships this many anchors per class where a row keeps statistics per condition:
# half are replayed, and the source's condition is estimated on those (engine/evaluation/bn_bank.py).
START_ANCHORS = 50


@dataclass
class TransferMethod:
    name: str
    sparsity: str = "none"
    strategy: str = "dense"
    method: dict = field(default_factory=dict)
    fraction: str | None = None       # the planner's budget, a fraction of full fine-tuning's counted peak
    note: str = ""
    bn_stats: str | None = REESTIMATE  # what the run does with the BatchNorm running statistics (None: its plan's)
    config: dict = field(default_factory=dict)   # other TrainConfig fields of the row (AdaBN: no epoch)
    recipe: str = ""                  # its learning rate and where it comes from (row_recipes)

    @property
    def trained_set(self) -> str:
        """The row's name without its statistics mode: the set its memory plan is made for."""
        return self.name.rsplit("/", 1)[0]


def with_statistics(m: TransferMethod, mode: str) -> TransferMethod:
    """The same trained set under another statistics mode, named SET/MODE."""
    return dataclasses.replace(m, name=f"{m.name}/{mode}", bn_stats=mode, method=dict(m.method),
                               note=f"{m.note}; statistics {mode}")


def transfer_methods(last_k: int = 2, adabn_images: int = 2000) -> list[TransferMethod]:
    """Every row; `adabn_images`: the device images AdaBN re-estimates the statistics on (all of them)."""
    gate = {"target_activation": ACTIVATION}
    frozen = [TransferMethod("classifier", "classifier", note="the classifier alone (TinyTL's FT-Last)",
                             bn_stats=FROZEN),
              TransferMethod("bn+classifier", "bn-affine", note="BatchNorm scales and shifts, the classifier "
                                                                "(TinyTL's FT-Norm+Last)", bn_stats=FROZEN),
              TransferMethod("bias+bn+classifier", "bias-norm", note="every bias and norm, the classifier",
                             bn_stats=FROZEN),
              TransferMethod("last-k", "last-k", method={"last_k": last_k}, bn_stats=FROZEN,
                             note=f"the model's last {last_k} blocks (the classifier counts as one)"),
              TransferMethod("lite-residual", "lite-residual", bn_stats=FROZEN,
                             note="TinyTL's lite residual branches beside the frozen blocks, with every bias and the "
                                  "classifier"),
              TransferMethod("sparse", "budget", bn_stats=FROZEN,
                             note=f"MCUNetV3's shape: biases and norms everywhere, the classifier, the weights of the "
                                  f"blocks the warmup's Fisher information rates highest per parameter, up to "
                                  f"{SPARSE_SHARE:.0%} of them")]
    full = TransferMethod(REFERENCE, note="every parameter, every sample")
    return [full, with_statistics(full, FROZEN),
            TransferMethod(DEFAULT, "auto", bn_stats=None, config={"keep": "best", "evaluate_start": True, "val_subset": 0},
                           note="a plain `finetune`: its own choice of set, statistics and learning rate from the "
                                "recipes the checkpoint ships; it keeps its best epoch on validation sized to the run"),
            *frozen, *[with_statistics(m, REESTIMATE) for m in frozen],
            TransferMethod(ADABN, "classifier", config={"epochs": 0, "bn_adapt": adabn_images, "evaluate_start": True},
                           note=f"AdaBN: the statistics alone, re-estimated on the device's {adabn_images} images "
                                "(cumulative average), no training"),
            with_statistics(frozen[0], PER_CONDITION),
            TransferMethod(f"{ADABN}/{PER_CONDITION}", "classifier", bn_stats=PER_CONDITION,
                           config={"epochs": 0, "bn_condition_images": adabn_images, "evaluate_start": True},
                           note=f"AdaBN per condition: the device's statistics from its {adabn_images} images kept "
                                "beside the source's, chosen frame by frame; no training"),
            *[TransferMethod(f"planner@{f}", "budget", fraction=f, bn_stats=None,
                             note=f"--sparsity budget at {f} of full FT's counted peak; statistics as the plan "
                                  "chooses them per candidate") for f in FRACTIONS],
            TransferMethod(f"sundew@{ACTIVATION}", strategy="sundew", method=dict(gate), note="Sundew gate"),
            TransferMethod(f"random@{ACTIVATION}", strategy="random", method=dict(gate), note="random gate"),
            TransferMethod("sel", strategy="sel", note="the SEL curriculum (easy first, by the start's loss)"),
            TransferMethod("sel-control", strategy="sel", method={"difficulty": "random"},
                           note="the SEL curriculum with random difficulty")]


def named_pairs(names: list[str]) -> list[tuple[str, str]]:
    """The differences the bench states besides each method's against full FT, where both ran."""
    pairs = [(f"planner@{f}", other) for f in FRACTIONS for other in ("last-k", "bias+bn+classifier")]
    pairs += [(f"sundew@{ACTIVATION}", f"random@{ACTIVATION}"), (f"sundew@{ACTIVATION}", REFERENCE),
              ("sel", "sel-control")]
    pairs += [(f"{s}/{REESTIMATE}", s) for s in FROZEN_SETS]        # what moving the statistics is worth
    pairs += [(f"classifier/{PER_CONDITION}", other) for other in ("classifier", f"classifier/{REESTIMATE}", ADABN)]
    pairs += [(f"{ADABN}/{PER_CONDITION}", other) for other in (ADABN, f"classifier/{PER_CONDITION}")]
    return [(a, b) for a, b in pairs if a in names and b in names]


def chosen_methods(text: str | None, known: list[TransferMethod]) -> list[TransferMethod]:
    """The methods `--methods` names (full FT always runs, in both statistics modes: every difference is
    taken against the better of them, and against the best row)."""
    wanted = parse_methods(text, [m.name for m in known])
    return [m for m in known if m.name in FULL_FT or m.name in wanted]


FULL_FT = (REFERENCE, f"{REFERENCE}/{FROZEN}")
# The shipped set (engine/loop/set_gains.py) each trained row runs, and its statistics as a recipe names them.
SHIPPED_SETS = {"classifier": "classifier", "bn+classifier": "bn+classifier", "bias+bn+classifier": "bias+bn+classifier",
                REFERENCE: "full FT"}
RECIPE_MODES = {FROZEN: "frozen", REESTIMATE: "train"}


def row_recipes(methods: list[TransferMethod], checkpoint: Path, steps: int, batch_size: int, lr: float) -> None:
    """Each row's learning rate: a shipped set's in its statistics mode, the best recipe the checkpoint
    ships at the mark nearest the row's images (engine/loop/set_gains.py); the default and the planner
    choose their own; every other row runs at the bench's --lr. Said in `recipe`, its rate in `config`."""
    from edge_sel.engine.loop.plan_sets import LAST_K
    from edge_sel.engine.loop.set_gains import nearest_mark, recipe_at
    served = read_card(checkpoint).set_gains
    mark = None if served is None else nearest_mark(served, steps * batch_size)
    for m in methods:
        name = SHIPPED_SETS.get(m.trained_set) or (f"last-{LAST_K}" if m.trained_set == "last-k"
                                                   and m.method.get("last_k") == LAST_K else None)
        recipe = None if mark is None or name not in served["sets"] or m.bn_stats not in RECIPE_MODES else \
            recipe_at(served, name, mark, RECIPE_MODES[m.bn_stats])
        if m.sparsity == "auto" or m.fraction is not None:
            m.recipe = "its own choice (shipped recipes)" if served else f"its own choice; lr {lr:g} (none shipped)"
        elif recipe is not None:
            m.config = {**m.config, "lr": recipe["lr"]}
            m.recipe = f"lr {recipe['lr']:g} (shipped: best of {len(served['lr_grid'])} at {served['steps'][mark]} steps)"
        else:
            m.recipe = f"lr {lr:g} (the bench's)"


@dataclass
class TransferSettings:
    checkpoint: Path
    data: DataOptions                 # shift and shift_seed are set per seed
    condition: str
    methods: list[TransferMethod]
    seeds: list[int]
    epochs: int
    lr: float
    batch_size: int
    val_subset: int
    bn_momentum: float | None
    device: str
    out: Path
    own_process: bool = True


def sparse_plan(mm: MemoryModel, checkpoint: Path, batch_size: int) -> tuple[dict, float, dict]:
    """The sparse update's memory plan (what trains, counted), the budget it fits at the whole batch,
    and what chose it."""
    card = read_card(checkpoint)
    memory = read_source_memory(checkpoint, card.input_shape, card.source_memory)
    params = dict(mm.model.named_parameters())
    if memory is not None and all(n in memory.fisher for n in params):
        gains, source = {n: float(memory.fisher[n].sum()) for n in params}, "the warmup's Fisher information"
    else:           # equal gain per parameter: the later blocks first
        gains, source = {n: float(p.numel()) for n, p in params.items()}, "none shipped: the last blocks first"
    names = sparse_names(mm.model, gains, SPARSE_SHARE)
    budget_mb = mm.counter.count(mm.shape, names).peak / MiB / (1 - RESERVE) * 1.001
    plan = plan_memory(mm.counter, mm.model, batch_size, budget_mb, names, mm.shape.bn_statistics)
    plan.trainable = sorted(names)
    chosen = {"tensors": len(names), "parameters": sum(params[n].numel() for n in names),
              "share": sum(params[n].numel() for n in names) / sum(p.numel() for p in params.values()),
              "gains": source}
    return plan.to_json(), budget_mb, chosen


def start_anchors(methods: list[TransferMethod]) -> int:
    """Anchors per class the bench's own start ships: those statistics per condition estimate the
    source's condition on, where such a row runs; none otherwise (they cost the pretrain its Fisher pass)."""
    return START_ANCHORS if any(m.bn_stats == PER_CONDITION for m in methods) else 0


def imagenet_start(model_name: str, data: DataOptions, out: Path, device: str, lr: float = 0.01,
                   batch_size: int = 32, set_gains_steps: int = 0, anchors_per_class: int = 0) -> Path:
    """The model's ImageNet weights with a fresh head for the data's classes, as a checkpoint in
    OUT/start: a pretrain of no epoch on shard 0/2 (`--pretrained imagenet`: the weights' own input
    normalisation), with `anchors_per_class` anchors (start_anchors) and the planner's set gains
    measured on that shard's images up to `set_gains_steps` at the bench's `lr` and `batch_size` (0: none)."""
    pretrain(model_name, dataclasses.replace(data, shard="0/2", shift=None), TrainConfig(
        epochs=0, device=device, anchors_per_class=anchors_per_class, lr=lr, batch_size=batch_size,
        set_gains_steps=set_gains_steps, **SAME_NUMERICS), out / "start", quiet=True, pretrained="imagenet")
    return out / "start"


def set_gains_steps(methods: list[TransferMethod], epochs: int, images: int, batch_size: int) -> int:
    """The steps the start measures its sets' recipes up to (the rows' learning rates, the default's and
    the planner's choices): the power of two at or above a row's training steps."""
    steps = max(1, epochs * math.ceil(images / batch_size))
    return 1 << (steps - 1).bit_length()


def start_row(run_dir: Path, seed: int) -> dict:
    out = outcome(run_dir)
    clean = out["test_acc"] if out["clean_test_acc"] is None else out["clean_test_acc"]
    return {"seed": seed, "test_acc": out["test_acc"], "clean_test_acc": clean, "run_dir": str(run_dir)}


def method_row(run_dir: Path, seed: int, start: dict, full_mb: float, measured_alone: bool) -> dict:
    """A method's row: forgetting counted from the seed's start evaluation, not the run's own."""
    return run_result(run_dir, seed, full_mb, measured_alone, start_clean=start["clean_test_acc"])


def method_config(m: TransferMethod, common: dict, budgets: dict, plans: dict) -> TrainConfig:
    """One row's fine-tune: the seed's common settings, the row's set, statistics, rate and own fields.
    Rows that choose their own (the default, the planner) are given no rate or statistics."""
    chooses = m.sparsity == "auto" or m.fraction is not None
    if m.bn_stats == FROZEN:        # statistics that never move take no momentum
        common = {**common, "bn_momentum": None}
    return TrainConfig(**{**common, "evaluate_start": False, **m.config}, strategy=m.strategy, sparsity=m.sparsity,
                       method=dict(m.method), bn_stats=m.bn_stats,
                       memory_budget_mb=budgets.get(m.name, budgets.get(m.trained_set)),
                       memory_plan=plans.get(m.name, plans.get(m.trained_set)),
                       explicit=[] if chooses else ["lr", "bn_stats", "sparsity"])


def last_k_blocks(checkpoint: Path, k: int) -> list[str]:
    """The blocks `--sparsity last-k` trains on the checkpoint's model (edge_sel.models.blocks)."""
    from edge_sel.models import load_checkpoint
    from edge_sel.models.blocks import named_blocks
    model, _ = load_checkpoint(checkpoint)
    return [name for name, _ in named_blocks(model)[-k:]]


def name_what_trains(methods: list[TransferMethod], checkpoint: Path) -> None:
    """last-k rows name the blocks they train on this model (Lite0's last two are its 1x1 head
    convolution and the classifier, not two MBConv blocks)."""
    for m in methods:
        if m.sparsity == "last-k":
            blocks = last_k_blocks(checkpoint, m.method["last_k"])
            m.note = f"{m.note.split(';')[0]}: {', '.join(blocks)}" + m.note[len(m.note.split(';')[0]):]


def run_bench(s: TransferSettings, log=print, after_run=None, stop: BenchStop | None = None) -> dict:
    """Per seed: the start once, then every method that fits; `after_run` gets the state so far. A run
    stopped early (a stop signal, `stop`'s handlers where entered) ends the bench: it is named in
    "stopped", not a row. A run that refuses its budget is named in "refused", not a row, and the bench
    goes on."""
    stop = stop or BenchStop()
    base = TrainConfig(epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, device=s.device, **SAME_NUMERICS)
    mm = MemoryModel(s.checkpoint, base)
    budgets = {m.name: round(float(Fraction(m.fraction)) * mm.full_mb, 3) for m in s.methods if m.fraction}
    fits = {name: mm.fit("planner", mb) for name, mb in budgets.items()}
    plans, sparse = {}, None
    if any(m.trained_set == "sparse" for m in s.methods):
        plans["sparse"], budgets["sparse"], sparse = sparse_plan(mm, s.checkpoint, s.batch_size)
    runnable = [m for m in s.methods if m.name not in fits or fits[m.name].fits]
    row_recipes(runnable, s.checkpoint, s.epochs * math.ceil((s.data.subset or 0) / s.batch_size), s.batch_size, s.lr)
    results: dict = {START: [], **{m.name: [] for m in runnable}}
    refused: dict = {}
    t0 = time.perf_counter()
    for seed in s.seeds:
        data = DataOptions(**{**vars(s.data), "shift": CONDITIONS[s.condition], "shift_seed": seed})
        data.__dict__.pop("_source", None)
        common = dict(epochs=s.epochs, lr=s.lr, seed=seed, device=s.device, batch_size=s.batch_size,
                      val_subset=s.val_subset, keep="last", checkpoint_every=0, eval_batch_size=s.batch_size,
                      bn_momentum=s.bn_momentum, **SAME_NUMERICS)
        start_dir = s.out / "runs" / START / f"seed{seed}"
        if _ran(stop, s, data, TrainConfig(**{**common, "epochs": 0}), start_dir, START, seed, refused) != RAN:
            break
        start = start_row(start_dir, seed)
        results[START].append(start)
        log(f"  seed {seed} {START:20s} test {start['test_acc']:.4f} clean {start['clean_test_acc']:.4f}")
        for m in runnable:
            cfg = method_config(m, common, budgets, plans)
            run_dir = s.out / "runs" / run_name(m.name) / f"seed{seed}"
            done = _ran(stop, s, data, cfg, run_dir, m.name, seed, refused, log)
            if done == STOPPED:
                break
            if done == RAN:
                row = method_row(run_dir, seed, start, mm.full_mb, s.own_process)
                results[m.name].append(row)
                log(f"  seed {seed} {m.name:20s} test {row['test_acc']:.4f} clean {row['clean_test_acc']:.4f} "
                    f"counted {row['counted_peak_mb']:.1f} MiB")
            if after_run is not None:       # a bench stopped by a time limit keeps every run it finished
                after_run(state(mm, budgets, fits, sparse, results, time.perf_counter() - t0, s.own_process, refused))
        if stop.stopped:
            break
    return {**state(mm, budgets, fits, sparse, results, time.perf_counter() - t0, s.own_process, refused),
            "stopped": stop.describe()}


def _ran(stop: BenchStop, s: TransferSettings, data: DataOptions, cfg: TrainConfig, run_dir: Path, name: str,
         seed: int, refused: dict, log=print) -> str:
    """One fine-tune of the bench: RAN, STOPPED or REFUSED (bench_run.run_one)."""
    return run_one(stop, s.checkpoint, data, cfg, run_dir, s.own_process, name, seed, refused, log)


def state(mm: MemoryModel, budgets: dict, fits: dict, sparse: dict | None, results: dict, wall_s: float,
          own_process: bool, refused: dict) -> dict:
    methods_used = sorted({r.get("energy_method") for rows in results.values() for r in rows} - {None})
    return {"full_ft_counted_mb": round(mm.full_mb, 3), "budgets_mb": budgets, "input_shape": mm.input_shape,
            "fits": {k: {"fits": f.fits, "needs_mb": f.needs_mb} for k, f in fits.items()}, "sparse": sparse,
            "results": {k: list(v) for k, v in results.items()}, "wall_s": wall_s, "energy_methods": methods_used,
            "own_process": own_process, "refused": {k: list(v) for k, v in refused.items()}}


def settings_record(s: TransferSettings, **more) -> dict:
    """What the bench ran with, for results.json."""
    return {"suite": "transfer", "checkpoint": str(s.checkpoint), "condition": s.condition,
            "shift": CONDITIONS[s.condition], "data": {k: v for k, v in vars(s.data).items() if not k.startswith("_")},
            "methods": [dataclasses.asdict(m) for m in s.methods], "epochs": s.epochs, "lr": s.lr,
            "batch_size": s.batch_size, "val_subset": s.val_subset, "bn_momentum": s.bn_momentum,
            "model": read_card(s.checkpoint).architecture, **more}
