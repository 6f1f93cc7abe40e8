"""Surgical fine-tuning by relative gradient norm (Auto-RGN; Lee et al., "Surgical Fine-Tuning
Improves Adaptation to Distribution Shifts", ICLR 2023).

Which blocks should adapt depends on where the shift is: an input-level shift (noise, blur,
contrast) calls for the early blocks, a label-level one for the head. The measured signal is each
block's relative gradient norm RGN = ||grad|| / ||weight|| on local data. Every `probe_every` steps
one dense step measures it; until the next probe each block learns at lr x RGN / max RGN, and the
blocks whose share falls below `floor` are frozen (requires_grad=False): autograd computes no weight
gradient for them, a frozen prefix skips its backward pass, and the FLOP counter counts exactly the
graph that runs. An early block may be chosen; its backward cost covers every later layer's input
gradient, and the counter charges it. Records name the trained blocks and their scales.
"""

from __future__ import annotations

from edge_sel.errors import InputError
from edge_sel.methods.base import Updater
from edge_sel.methods.sparse import block_guilt


def rgn_scales(ratios: list[float | None]) -> list[float | None]:
    """Each block's RGN over the largest (Auto-RGN's per-block learning-rate multiplier)."""
    values = [r for r in ratios if r is not None]
    top = max(values) if values else 0.0
    return [None if r is None else (r / top if top > 0 else 1.0) for r in ratios]


def blocks_to_train(scales: list[float | None], floor: float) -> list[int]:
    """Blocks whose multiplier reaches `floor`; the block with the largest RGN always trains."""
    known = [i for i, s in enumerate(scales) if s is not None]
    if not known:
        return list(range(len(scales)))
    chosen = [i for i in known if scales[i] >= floor]
    return chosen or [max(known, key=lambda i: scales[i])]


class AutoRGN(Updater):
    name = "rgn"
    saves_compute = True

    def __init__(self, floor: float = 0.3, probe_every: int = 50):
        self.floor, self.probe_every = floor, probe_every
        self.trained: list[int] = []
        self.scales: list[float | None] = []
        self.last_rgn: list[float | None] = []
        self._probing = False

    def attach(self, model, optimizer, ctx) -> None:
        super().attach(model, optimizer, ctx)
        self.blocks = [list(b.parameters()) for b in model.blocks()]
        in_blocks = {id(p) for ps in self.blocks for p in ps}
        rest = [p for p in model.parameters() if id(p) not in in_blocks]
        self.sizes = [sum(p.numel() for p in ps) for ps in self.blocks]
        self.total = sum(p.numel() for p in model.parameters())
        # One optimizer group per block, so each learns at its own rate (the backend multiplies the
        # scheduled lr by a group's lr_scale). Done before any step: no optimizer state exists yet.
        defaults = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        optimizer.param_groups.clear()
        for params in self.blocks + ([rest] if rest else []):
            optimizer.add_param_group({**defaults, "params": params, "lr_scale": 1.0})
        self.trained = list(range(len(self.blocks)))
        self.scales = [1.0] * len(self.blocks)
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._steps = self._probes = 0
        self._frozen_sum = 0.0
        self._ever_trained: set[int] = set()

    def _apply(self, trained: list[int], scales: list[float | None]) -> None:
        self.trained, self.scales = trained, scales
        for i, params in enumerate(self.blocks):
            on = i in trained
            for p in params:
                p.requires_grad_(on)
                if not on:
                    p.grad = None          # the optimizer skips a parameter whose grad is None
            self.optimizer.param_groups[i]["lr_scale"] = scales[i] if on and scales[i] is not None else 1.0

    def _frozen_share(self) -> float:
        return sum(s for i, s in enumerate(self.sizes) if i not in self.trained) / max(1, self.total)

    def before_step(self, step: int, batch) -> None:
        self._probing = step % self.probe_every == 0
        if self._probing:                  # a dense step measures every block (at the current scales)
            for params in self.blocks:
                for p in params:
                    p.requires_grad_(True)
            self.trained = list(range(len(self.blocks)))
            self._probes += 1
        self._steps += 1
        self._frozen_sum += self._frozen_share()
        self._ever_trained.update(self.trained)

    def after_backward(self, step: int) -> None:
        if self._probing:
            self.last_rgn = block_guilt(self.blocks)

    def after_step(self, step: int) -> None:
        if self._probing:
            scales = rgn_scales(self.last_rgn)
            self._apply(blocks_to_train(scales, self.floor), scales)
            self._probing = False

    def end_epoch(self) -> dict:
        share = self._frozen_sum / self._steps if self._steps else 0.0
        out = {"grad_sparsity": share, "frozen_frac": share, "sparsity_kind": "structured",
               "compute_saved_by_sparsity": True, "probe_steps": self._probes,
               "trained_blocks": list(self.trained), "blocks_trained_in_epoch": sorted(self._ever_trained),
               "block_rgn": [None if r is None else round(r, 6) for r in self.last_rgn],
               "block_lr_scale": [None if s is None else round(s, 4) for s in self.scales]}
        self._reset_epoch()
        return out

    def state_dict(self) -> dict:
        return {"trained": list(self.trained), "scales": list(self.scales), "last_rgn": list(self.last_rgn),
                "steps": self._steps, "probes": self._probes, "frozen_sum": self._frozen_sum,
                "ever_trained": sorted(self._ever_trained)}

    def load_state_dict(self, state: dict) -> None:
        self._apply(list(state.get("trained", self.trained)), list(state.get("scales", self.scales)))
        self.last_rgn = list(state.get("last_rgn", self.last_rgn))
        self._steps = int(state.get("steps", self._steps))
        self._probes = int(state.get("probes", self._probes))
        self._frozen_sum = float(state.get("frozen_sum", self._frozen_sum))
        self._ever_trained = set(state.get("ever_trained", []))


def register() -> None:
    from edge_sel.methods import UPDATERS
    from edge_sel.methods.presets import PRESETS
    PRESETS["adapt"] = lambda cfg, prefer: preset_adapt(cfg, prefer)

    def make(method: dict) -> AutoRGN:
        floor = method.get("rgn_floor")
        probe = method.get("probe_every")
        if floor is not None and not 0 <= floor <= 1:
            raise InputError(f"--rgn-floor must be a share in [0, 1], got {floor}")
        if probe is not None and probe < 1:
            raise InputError(f"--probe-every must be at least 1, got {probe}")
        return AutoRGN(0.3 if floor is None else floor, 50 if probe is None else probe)
    UPDATERS["rgn"] = make


def preset_adapt(cfg, prefer) -> None:
    """The adaptation recipe, cheapest lever first: BatchNorm statistics from 500 unlabelled local
    images, then fine-tuning of a random 20% of the samples per epoch in which only the blocks with a
    large gradient-to-weight ratio learn, each at its own rate. Options the user gave win."""
    if cfg.bn_adapt == 0:
        cfg.bn_adapt = 500
    if cfg.strategy == "dense":
        cfg.strategy = "random"
    if cfg.strategy in ("random", "sundew") and cfg.method.get("target_activation") is None:
        cfg.method["target_activation"] = 0.2
    if cfg.sparsity is None:
        cfg.sparsity = "rgn"
