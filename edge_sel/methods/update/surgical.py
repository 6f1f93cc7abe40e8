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
from edge_sel.methods.registry import UPDATERS
from edge_sel.methods.update.sparse import LayerFreeze, parse_block_names


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


class AutoRGN(LayerFreeze):
    """`layers`' probe machinery (dense probe steps, frozen blocks without gradients, the frozen
    share) with another choice after each probe: blocks by RGN share, each at its own rate."""
    name = "rgn"

    def __init__(self, floor: float = 0.3, probe_every: int = 50, block_names: list[str] | None = None):
        super().__init__(target=0.0, probe_every=probe_every, block_names=block_names)
        self.floor = floor
        self.scales: list[float | None] = []

    @property
    def trained(self) -> list[int]:
        return [i for i in range(len(self.blocks)) if i not in self.frozen]

    @property
    def last_rgn(self) -> list[float | None]:
        return self.last_guilt          # the probe's ||grad|| / ||weight|| per block

    def attach(self, model, optimizer, ctx) -> None:
        super().attach(model, optimizer, ctx)
        in_blocks = {id(p) for ps in self.blocks for p in ps}
        rest = [p for p in model.parameters() if id(p) not in in_blocks]
        # One optimizer group per block, so each learns at its own rate (the backend multiplies the
        # scheduled lr by a group's lr_scale). Done before any step: no optimizer state exists yet.
        defaults = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        optimizer.param_groups.clear()
        for params in self.blocks + ([rest] if rest else []):
            optimizer.add_param_group({**defaults, "params": params, "lr_scale": 1.0})
        self.scales = [1.0] * len(self.blocks)

    def _reset_epoch(self) -> None:
        super()._reset_epoch()
        self._ever_trained: set[int] = set()

    def _set_scales(self, scales: list[float | None]) -> None:
        # A frozen block keeps its own scale too: the next probe step trains every block, and a
        # block of low relevance must not take a full-rate step there.
        self.scales = scales
        for i, scale in enumerate(scales):
            self.optimizer.param_groups[i]["lr_scale"] = 1.0 if scale is None else scale

    def before_step(self, step: int, batch) -> None:
        super().before_step(step, batch)   # a probe step trains every block, at the current scales
        self._ever_trained.update(self.trained)

    def after_step(self, step: int) -> None:
        if self._probing:
            scales = rgn_scales(self.last_guilt)
            trained = blocks_to_train(scales, self.floor)
            self._apply([i for i in range(len(self.blocks)) if i not in trained])
            self._set_scales(scales)
            self._probing = False

    def end_epoch(self) -> dict:
        share = self._frozen_sum / self._steps if self._steps else 0.0
        out = {"grad_sparsity": share, "frozen_frac": share, "sparsity_kind": "structured",
               "compute_saved_by_sparsity": True, "probe_steps": self._probes,
               "trained_blocks": self.trained, "blocks_trained_in_epoch": sorted(self._ever_trained),
               "block_rgn": [None if r is None else round(r, 6) for r in self.last_guilt],
               "block_lr_scale": [None if s is None else round(s, 4) for s in self.scales]}
        self._reset_epoch()
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "scales": list(self.scales), "ever_trained": sorted(self._ever_trained)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._set_scales(list(state.get("scales", self.scales)))
        self._ever_trained = set(state.get("ever_trained", []))


def register() -> None:
    def make(method: dict) -> AutoRGN:
        floor = method.get("rgn_floor")
        probe = method.get("probe_every")
        if floor is not None and not 0 <= floor <= 1:
            raise InputError(f"--rgn-floor must be a share in [0, 1], got {floor}")
        if probe is not None and probe < 1:
            raise InputError(f"--probe-every must be at least 1, got {probe}")
        return AutoRGN(0.3 if floor is None else floor, 50 if probe is None else probe,
                       parse_block_names(method.get("blocks")))
    UPDATERS["rgn"] = make
