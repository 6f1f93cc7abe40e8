"""The systems each benchmark suite compares, as data: phases of fine-tuning with their strategy,
updater, method options and training recipe.

Every system of a suite starts from the same checkpoint (per seed) and trains on the same data.
A system is a list of steps: `Phase` (one `finetune` from the previous step's weights) or `Rewind`
(lottery: prune the previous phase's weights by global magnitude and rewind the survivors to the
system's starting weights). A random control (`control_of`) is built at run time from the gated
system it controls: the same steps, each gated phase replaced by random gating at the activation
that system actually realised in the same seed, with the same optimizer and schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Phase:
    name: str
    epochs: int
    strategy: str = "dense"
    sparsity: str | None = None
    method: dict = field(default_factory=dict)
    # TrainConfig fields for this phase. None: the suite's common recipe. A preset phase starts
    # from TrainConfig's defaults so the preset sets its own optimizer, lr and schedule.
    training: dict | None = None

    @property
    def gated(self) -> bool:
        return self.strategy != "dense"


@dataclass
class Rewind:
    prune_frac: float = 0.8
    name: str = "prune-rewind"


@dataclass
class System:
    name: str
    steps: list
    note: str = ""
    control_of: str | None = None       # random gating matched to this system's realised activation

    @property
    def phases(self) -> list[Phase]:
        return [s for s in self.steps if isinstance(s, Phase)]


def _preset(name: str, epochs: int, strategy: str, preset: str, **method) -> Phase:
    return Phase(name, epochs, strategy, None, {"preset": preset, **method}, training={})


# Our recommended configuration: the Sundew gate over stale DIH hardness (no scoring pass: the
# hardness comes from each sample's last training visit) with structured layer freezing, which
# removes backward compute rather than masking it after the fact.
RECOMMENDED = {"strategy": "sundew", "sparsity": "layers",
               "method": {"significance": "dih", "target_activation": 0.5}}


def _recommended(epochs: int) -> Phase:
    return Phase("train", epochs, RECOMMENDED["strategy"], RECOMMENDED["sparsity"], dict(RECOMMENDED["method"]))


def edge_systems(epochs: int) -> list[System]:
    """Fine-tuning from a warmup checkpoint, every system on the same epoch budget (the lottery's
    dense first phase comes on top, as in the seed: half as many epochs)."""
    e = epochs
    return [
        System("dense", [Phase("train", e)], "every sample, every parameter"),
        System("lottery", [Phase("dense", max(1, e // 2)), Rewind(0.8), Phase("pruned", e, sparsity="lottery")],
               "80% global magnitude pruning, rewound to the warmup weights; both phases counted; "
               "masked dense kernels save no FLOPs"),
        System("sel-95", [_preset("train", e, "sel", "sel-95")],
               "seed recipe: untrained-model order, guilt mask after backward, Adam, loss-scaled lr"),
        System("warmup-sel", [_preset("train", e, "sel", "warmup-sel")], "sel-95 after dense epochs on easy samples"),
        System("ast-prod", [_preset("train", e, "sundew", "ast-prod")],
               "seed recipe: full forward and backward of every batch, loss masked to the selected rows"),
        System("random@ast-prod", [], "random gating at the share of rows whose loss ast-prod counted",
               control_of="ast-prod"),
        System("dihcl", [Phase("train", e, "dihcl")], "DIH curriculum, greedy top-k, shrinking subset"),
        System("sundew+layers (ours)", [_recommended(e)],
               "Sundew gate on stale DIH hardness at 0.5 activation, layer freezing"),
        System("random@ours", [], "random gating at the activation 'ours' realised, same updater",
               control_of="sundew+layers (ours)"),
    ]


# The AST seed's warmup recipe: SGD 0.01, cosine with 2 warmup epochs, weight decay 1e-4, label
# smoothing 0.1.
AST_WARMUP = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine",
              "warmup_epochs": 2.0, "label_smoothing": 0.1}


def reference_systems(max_epochs: int | None = None) -> list[System]:
    """The seeds' CIFAR-10 table plus DIHCL, the random controls and ours. Epochs as the seeds ran
    them, each phase capped at `max_epochs` where given (--quick: 2; --max-epochs: a time-boxed run)."""
    cap = (lambda n: min(n, max_epochs)) if max_epochs else (lambda n: n)
    warm = dict(AST_WARMUP, warmup_epochs=min(AST_WARMUP["warmup_epochs"], cap(10)))
    return [
        System("dense", [Phase("train", cap(30))], "seed baseline: 30 epochs, Adam 1e-3 constant, batch 64"),
        System("lottery", [Phase("dense", cap(15)), Rewind(0.8), Phase("pruned", cap(30), sparsity="lottery")],
               "15 dense epochs (counted here, not in the seed), prune 80% by global magnitude, rewind to "
               "the initial weights, 30 epochs with the mask held; masked dense kernels save no FLOPs"),
        System("sel-95", [_preset("train", cap(50), "sel", "sel-95")], "seed recipe, 5 stages x 10 epochs"),
        System("warmup-sel", [_preset("train", cap(55), "sel", "warmup-sel")],
               "5 dense epochs on the 10,000 easiest samples, then sel-95"),
        System("ast-prod", [Phase("dense-warmup", cap(10), training=warm),
                            _preset("ast", cap(40), "sundew", "ast-prod")],
               "seed PROD recipe: 10 dense warmup epochs, 40 AST epochs computing every sample"),
        System("random@ast-prod", [], "random gating at the share of rows whose loss ast-prod counted, "
               "after the same dense warmup", control_of="ast-prod"),
        System("dihcl", [Phase("train", cap(30), "dihcl")], "DIH curriculum, greedy top-k, 30 epochs"),
        System("sundew+layers (ours)", [_recommended(cap(30))],
               "Sundew gate on stale DIH hardness at 0.5 activation, layer freezing, 30 epochs"),
        System("random@ours", [], "random gating at the activation 'ours' realised, same updater",
               control_of="sundew+layers (ours)"),
    ]


# Training recipe shared by the systems without a preset.
EDGE_COMMON = {"optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
               "batch_size": 128}
# The SEL seed's baseline: Adam 1e-3, constant, no weight decay, batch 64.
REFERENCE_COMMON = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant", "batch_size": 64}


def select(systems: list[System], names: str | None) -> list[System]:
    """--systems a,b,c: those systems, plus the gated systems their controls need (kept in suite order)."""
    if not names:
        return systems
    by_name = {s.name: s for s in systems}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        from edge_sel.errors import InputError
        raise InputError(f"--systems: unknown {', '.join(unknown)}; choose from {', '.join(by_name)}")
    keep = set(wanted)
    keep |= {by_name[n].control_of for n in wanted if by_name[n].control_of}
    return [s for s in systems if s.name in keep]
