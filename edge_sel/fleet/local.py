"""One client's part of a round: edge-sel's own fine-tune of the global weights on local data.

Flower-free, so it runs (and is tested) without the extra; client_app.py wraps it in messages."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from edge_sel.config import TrainConfig
from edge_sel.core.checkpoint import ModelCard
from edge_sel.data import Splits
from edge_sel.engine.machine.energy_setup import EnergyOptions
from edge_sel.engine.runs.data_options import check_compatible, dataset_card, vars_of
from edge_sel.engine.runs.training import train_model
from edge_sel.errors import InputError, parse_json
from edge_sel.fleet.node import NodeSettings
from edge_sel.fleet.partition import partition
from edge_sel.methods.options import check_options_used
from edge_sel.methods.presets import apply_preset, default_lr
from edge_sel.methods.registry import make_strategy, make_updater
from edge_sel.models import model_for_card
from edge_sel.threads import apply_threads


@dataclass
class RoundPlan:
    """What the server asks of every client in a round (the same for all of them)."""
    fleet_round: int
    epochs: int = 1
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float | None = None
    strategy: str = "dense"
    sparsity: str = "none"
    backend: str = "torch"
    method: dict = field(default_factory=dict)     # method options: gate, target_activation, ...
    keep: str = "last"                             # the fleet averages what was trained
    seed: int = 0
    proximal_mu: float = 0.0                       # FedProx: pull towards the round's global weights
    run_id: str = ""
    memory_format: str = "auto"                    # auto: measured once per device (then cached)
    eval_batch_size: int = 0
    val_subset: int = 0                            # validate locally on this many samples (0: all)

    def to_config(self) -> dict:
        """Flat str/int/float values for a Flower ConfigRecord."""
        return {"fleet-round": self.fleet_round, "epochs": self.epochs, "batch-size": self.batch_size,
                "optimizer": self.optimizer, "lr": -1.0 if self.lr is None else float(self.lr),
                "strategy": self.strategy, "sparsity": self.sparsity, "backend": self.backend,
                "method": json.dumps(self.method), "keep": self.keep, "seed": self.seed,
                "proximal-mu": float(self.proximal_mu), "run-id": self.run_id,
                "memory-format": self.memory_format, "eval-batch-size": self.eval_batch_size,
                "val-subset": self.val_subset}

    @classmethod
    def from_config(cls, c: dict) -> "RoundPlan":
        try:
            lr = float(c["lr"])
            return cls(int(c["fleet-round"]), int(c["epochs"]), int(c["batch-size"]), str(c["optimizer"]),
                       None if lr < 0 else lr, str(c["strategy"]), str(c["sparsity"]), str(c["backend"]),
                       parse_json(c["method"]), str(c["keep"]), int(c["seed"]),
                       float(c.get("proximal-mu", 0.0)), str(c.get("run-id", "")),
                       str(c.get("memory-format", "auto")), int(c.get("eval-batch-size", 0)),
                       int(c.get("val-subset", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"fleet round configuration: missing or bad field {e}") from None


def round_plan(settings, first_round: int) -> RoundPlan:
    """What the server asks of every client (ServerSettings -> RoundPlan); the run id names the
    clients' round directories."""
    return RoundPlan(first_round, settings.local_epochs, settings.batch_size, settings.optimizer,
                     None if settings.lr < 0 else settings.lr, settings.strategy, settings.sparsity,
                     settings.backend, settings.method_options, settings.keep, settings.seed,
                     settings.proximal_mu, run_id=settings.out_dir.name,
                     memory_format=settings.memory_format, eval_batch_size=settings.eval_batch_size,
                     val_subset=settings.val_subset)


def local_splits(node: NodeSettings) -> Splits:
    """The node's data, and of its training split the part that is this client's."""
    splits = node.data.load()
    if node.num_partitions is not None:
        parts = partition(splits.train.labels, node.num_partitions, node.scheme, node.alpha, node.partition_seed)
        mine = parts[node.partition_id]
        if len(mine) == 0:
            raise InputError(f"node config partition-id {node.partition_id}: this client's part of the "
                             f"{node.scheme} split is empty; use fewer partitions or a larger alpha")
        splits.train = splits.train.subset(mine)
    # The server evaluates the global model on its held-out set; a client's own test pass would
    # only cost joules every round.
    splits.test = splits.test.subset(torch.zeros(0, dtype=torch.long))
    return splits


def node_memory_budget(node: NodeSettings) -> float | None:
    """The device's memory budget: its node config's, else its profile's (never the server's: the
    server does not know what else runs on the device)."""
    if node.memory_budget_mb is not None or not node.profile:
        return node.memory_budget_mb
    from edge_sel.profiles import load_profile
    return load_profile(node.profile).memory_budget_mb


def node_energy(node: NodeSettings) -> tuple[EnergyOptions, str | None, int | None]:
    """Meters from the node config, else from its device profile; the profile's device and threads."""
    energy = EnergyOptions(meters=list(node.meters), watts_per_core=node.watts_per_core)
    device, threads = node.device, None
    if node.profile:
        from edge_sel.profiles import load_profile
        profile = load_profile(node.profile)
        s = profile.settings()
        energy.meters = energy.meters or list(s.get("meters", []))
        energy.watts_per_core = energy.watts_per_core or s.get("watts_per_core")
        energy.rails = s.get("rails")
        energy.max_temp_c = s.get("max_temp_c")
        device = device or s.get("device")
        threads = s.get("cpu_threads")
    return energy, device, threads


@contextlib.contextmanager
def proximal_pull(model: torch.nn.Module, mu: float):
    """FedProx's proximal term mu/2 * ||w - w_global||^2, added as its gradient mu * (w - w_global)
    to every trained weight's gradient just before each optimizer step (so it works with any
    strategy and updater). At that point a GradScaler has already unscaled the loss gradient: a
    term added during backward would be divided by the loss scale (~65536 under fp16).

    The round's weights are copied at the first step of the model's own optimizer (no step has
    moved them yet), inside the window the run measures its training peak in, as its count has
    them: copied when the round started, the copy (42.6 MiB for resnet18_cifar) was in the level
    the growth is measured over, and the count read 28% above the measurement."""
    if mu <= 0:
        yield
        return
    own = {id(p) for p in model.parameters()}
    anchors: dict[int, torch.Tensor] = {}

    def pull(optimizer, args, kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"] if id(p) in own]
        if not params:          # another model's optimizer: the memory counter's, on the meta device
            return
        with torch.no_grad():
            if not anchors:
                anchors.update({id(p): p.detach().clone() for p in model.parameters()})
            for p in params:
                if p.grad is not None:
                    p.grad.add_(p.detach() - anchors[id(p)].to(p.device), alpha=mu)

    handle = register_optimizer_step_pre_hook(pull)
    try:
        yield
    finally:
        handle.remove()


def round_train_config(plan: RoundPlan, partition_id: int | None = None, device: str | None = None) -> TrainConfig:
    """The clients' fine-tune settings for a round, validated as `finetune` validates them: the
    CLI calls this before any process starts, so a bad method fails there and not in every client."""
    method = {k: v for k, v in plan.method.items() if v is not None}
    cfg = TrainConfig(epochs=plan.epochs, batch_size=plan.batch_size, optimizer=plan.optimizer,
                      lr=plan.lr if plan.lr is not None else default_lr(plan.optimizer),
                      seed=plan.seed + 1000 * plan.fleet_round + (partition_id or 0),
                      device=device or "auto", strategy=plan.strategy, sparsity=plan.sparsity,
                      backend=plan.backend, method=method, keep=plan.keep, checkpoint_every=0,
                      memory_format=plan.memory_format, eval_batch_size=plan.eval_batch_size,
                      val_subset=plan.val_subset,
                      explicit=["batch_size", "lr", "optimizer", *method])
    apply_preset(cfg)
    cfg.validate()
    check_options_used(cfg.strategy, cfg.method.get("gate"), cfg.sparsity, method)
    make_strategy(cfg.strategy, cfg.method)         # unknown strategy, gate or their options
    make_updater(cfg.sparsity, cfg.method)
    if plan.proximal_mu > 0 and cfg.backend != "torch":
        raise InputError("fedprox: the proximal term needs --backend torch")
    return cfg


def train_round(weights: dict[str, torch.Tensor], card: ModelCard, node: NodeSettings,
                plan: RoundPlan, splits: Splits | None = None, node_id: str = "") -> tuple[dict, dict, dict]:
    """Fine-tune the global weights locally. Returns (new weights, numeric metrics, text info)."""
    energy, device, threads = node_energy(node)
    cfg = round_train_config(plan, node.partition_id, device)
    cfg.memory_budget_mb = node_memory_budget(node)
    cfg.proximal_mu = float(plan.proximal_mu)        # proximal_pull's copy of the weights, counted under the budget
    cfg.pin_for_memory_budget().validate()          # the step the plan counts, as finetune and night run it
    splits = splits if splits is not None else local_splits(node)
    where = Path(f"fleet-round-{plan.fleet_round}")
    check_compatible(card, splits, where)
    model = model_for_card(card)
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in weights.items()})
    card = ModelCard(**{**vars(card), "dataset": dataset_card(splits, node.data), "training": {}})
    out = node.round_dir(plan.fleet_round, plan.run_id, node_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = {"data": vars_of(node.data), "fleet": {"round": plan.fleet_round, **node.describe()}}
    before = torch.get_num_threads()
    # The profile's threads, else the node's environment's (a host of several SuperNodes gives each
    # its share), else the CPUs other work leaves free as the round starts.
    apply_threads(threads or int(os.environ.get("EDGE_SEL_THREADS") or 0) or None,
                  source="the node's cpu_threads or EDGE_SEL_THREADS")
    try:
        with proximal_pull(model, plan.proximal_mu):
            summary = train_model("finetune", model, card, splits, cfg, out, True, energy, source)
    finally:
        torch.set_num_threads(before)
    # contiguous: a channels_last tensor's raw buffer is not in the order its shape says
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, *round_metrics(summary, len(splits.train))


def round_metrics(summary: dict, train_samples: int) -> tuple[dict, dict]:
    """What a client reports: counts and joules (summed by the server), accuracies (averaged)."""
    t = summary["totals"]
    kept = summary.get("kept") or {}
    number = lambda v: float("nan") if v is None else v
    metrics = {
        "num-examples": int(train_samples),                       # FedAvg's weight
        "samples_trained": int(t.get("samples_trained") or 0),
        "forward_samples": int(t.get("forward_samples") or 0),
        "flops_forward": int(t.get("flops_forward") or 0),
        "flops_backward": int(t.get("flops_backward") or 0),
        "flops_eval": int(t.get("flops_eval") or 0),
        # every training pass the client ran: forward + backward, scoring, calibration (guilt
        # threshold, BatchNorm re-estimation) and the steps a rollback threw away
        "flops_train": int(t.get("flops_train") or 0),
        "flops_scoring": int(t.get("flops_scoring") or 0),
        "flops_calibration": int(t.get("flops_calibration") or 0),
        "rolled_back_flops": int(t.get("rolled_back_flops") or 0),
        "energy_j": float(number(t.get("energy_j"))),
        "eval_energy_j": float(number(t.get("eval_energy_j"))),
        "wall_s": float(number(t.get("train_wall_s"))),
        # the validation accuracy of the weights sent back (with --keep best, not the last epoch's)
        "local_val_acc": float(number(kept.get("kept_val_acc", summary["final"].get("val_acc")))),
        "local_train_acc": float(number(summary["final"].get("train_acc"))),
    }
    info = {"energy_source": str(t.get("energy_source") or "none"),
            "kept": str(kept.get("kept", "last")),
            "energy_method": str(t.get("energy_method") or "none"),
            "run_dir": str(summary.get("run_dir", ""))}
    return metrics, info
