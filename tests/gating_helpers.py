"""Small fakes for gate unit tests: a run context over a tiny indexed dataset, and training batches
with made-up losses and logits, so gates can be driven without a model."""

from __future__ import annotations

import torch

from edge_sel.data import Batch, IndexedDataset
from edge_sel.methods import GATES, RunContext
from edge_sel.methods.base import Plan


def fake_ctx(n: int = 200, num_classes: int = 4, epochs: int = 10, batch_size: int = 32, seed: int = 0) -> RunContext:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(10 * n, generator=torch.Generator().manual_seed(99))[:n] + 1000   # stable, not positions
    ds = IndexedDataset(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n) % num_classes, ids,
                        [f"c{i}" for i in range(num_classes)])
    return RunContext(ds, ds, torch.nn.Identity(), epochs, g, torch.device("cpu"), [0.0], [1.0], batch_size,
                      state={"epoch": 0, "step": 0, "lr": 0.1})


def hardness_of(ctx: RunContext) -> torch.Tensor:
    """A fixed per-position loss: samples with a higher position are harder."""
    n = len(ctx.train)
    return torch.linspace(0.05, 3.0, n)


def fake_batch(ctx: RunContext, positions: torch.Tensor):
    ds = ctx.train
    y = ds.labels[positions]
    losses = hardness_of(ctx)[positions]
    logits = torch.zeros(len(positions), ds.num_classes)
    logits[torch.arange(len(positions)), y] = (2.0 - losses).clamp_min(0)    # confident when easy
    return Batch(positions, ds.index[positions], torch.zeros(len(positions), 1, 2, 2), y), losses, logits


def make_gate(name: str, ctx: RunContext, **method):
    gate = GATES[name](method)
    gate.setup(ctx)
    return gate


def plan_of(ctx: RunContext, order: torch.Tensor | None = None) -> Plan:
    return Plan(torch.randperm(len(ctx.train), generator=ctx.generator) if order is None else order)


def train_epoch(gate, ctx: RunContext, epoch: int, base: Plan | None = None) -> Plan:
    """select -> observe every planned batch -> end_epoch, as the engine does."""
    ctx.state["epoch"] = epoch
    plan = gate.select(epoch, base if base is not None else plan_of(ctx))
    for lo in range(0, len(plan.positions), ctx.batch_size):
        gate.observe(*fake_batch(ctx, plan.positions[lo: lo + ctx.batch_size]))
    gate.end_epoch(epoch, {"energy_j": None, "backward_samples": len(plan.positions)})
    return plan


def stripes() -> torch.Tensor:
    """Four scenes with different spectra: horizontal and vertical stripes of periods 8 and 4."""
    x, r = torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(8)
    x[0][:, r % 8 < 4, :] = 200
    x[1][:, :, r % 8 < 4] = 200
    x[2][:, r % 4 < 2, :] = 200
    x[3][:, :, r % 4 < 2] = 200
    return x


def duplicated_scenes() -> IndexedDataset:
    """The four stripe scenes, each as four exact duplicates in a row (16 frames)."""
    return IndexedDataset(stripes().repeat_interleave(4, 0), torch.zeros(16, dtype=torch.long), torch.arange(16),
                          ["a", "b"])


def novelty_gate(**options):
    """A Sundew gate with novelty on, no temperature and no floor unless `options` say otherwise."""
    from edge_sel.methods.select.gating_config import gating_config
    from edge_sel.methods.select.sundew import SundewGate
    return SundewGate(gating_config({"target_activation": 0.5, "gate_temperature": 0.0, "min_activation": 0.0,
                                     "novelty": 1.0, **options}))


def novelty_gate_on(target: float, ds: IndexedDataset | None = None, **options):
    """`novelty_gate` set up on `ds` (the duplicated scenes by default) for 3 epochs; returns the
    gate and the (samples, FLOPs) it charged."""
    ds = duplicated_scenes() if ds is None else ds
    gate = novelty_gate(target_activation=target, **options)
    charged = []
    ctx = RunContext(ds, ds, None, 3, torch.Generator().manual_seed(0), torch.device("cpu"), [0.5], [0.25], 16,
                     charge_fn=lambda samples, flops: charged.append((samples, flops)))
    gate.setup(ctx)
    return gate, charged
