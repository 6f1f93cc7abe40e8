"""Data-parallel pretraining under torchrun: what one rank does differently from a single process.

Every rank plans the same shuffled epoch (its plan generator is seeded alike and only planning
draws from it), trains its strided share of that plan through DistributedDataParallel (which
averages the gradients), and adds its counters to the other ranks' once per epoch, so that every
record holds world totals. Rank 0 alone evaluates and writes records, checkpoints and the run
state; the other ranks meet it again at the next collective (the next step's gradient all-reduce,
or the closing barrier).

Energy is counted once per physical device: meters that read a whole CPU package or board (RAPL,
Jetson rails, a battery) are read by local rank 0 of each host only; the CPU-time estimate reads
each rank's own process and NVML each rank's own GPU, so those are summed over ranks.
"""

from __future__ import annotations

import gc
import inspect
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from edge_sel.engine.machine.distributed import World, barrier, init, shard_positions, shutdown, untrained_tail
from edge_sel.engine.loop.state import decode, encode
from edge_sel.errors import InputError
from edge_sel.methods import Plan

HOST_WIDE_METERS = frozenset({"rapl", "jetson", "battery"})    # one reader per host, or counted twice
RESTART_ENV, RUN_ID_ENV = "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID"
# Fault injection for the restart tests: EDGE_SEL_FAULT_KILL_AT_STEP (and _NAN_AT_STEP) hit only
# this rank, and only in torchrun's first attempt, so that the restarted workers can finish.
KILL_RANK_ENV = "EDGE_SEL_FAULT_KILL_RANK"
NAN_STEP_ENV = "EDGE_SEL_FAULT_NAN_AT_STEP"
# Optimizer steps are not summed: every rank takes the same synchronised steps.
COUNTERS = ("n_trained", "loss_sum", "correct", "flops_f", "flops_b", "singles_dropped", "throttled")


def restart_count(environ=os.environ) -> int:
    return int(environ.get(RESTART_ENV, "0") or 0)


def launch_info(world: World, environ=os.environ) -> dict:
    """What config.json keeps about the torchrun job that started a run."""
    return {"world_size": world.size, "run_id": environ.get(RUN_ID_ENV)}


def is_restart_of(config: dict, environ=os.environ) -> bool:
    """True when torchrun restarted the job that wrote `config` (same run id, restart count > 0):
    then its workers continue that run instead of refusing the existing --out."""
    started = config.get("torchrun") or {}
    run_id = environ.get(RUN_ID_ENV)
    return restart_count(environ) > 0 and run_id is not None and started.get("run_id") == run_id


def fault_kill_step(world: World, environ=os.environ) -> int | None:
    return _fault_step("EDGE_SEL_FAULT_KILL_AT_STEP", world, environ)


def fault_nan_step(world: World, environ=os.environ) -> int | None:
    """EDGE_SEL_FAULT_NAN_AT_STEP: the step whose losses this rank reports as NaN (once, first
    attempt only), for the test that all ranks roll back together."""
    return _fault_step(NAN_STEP_ENV, world, environ)


def _fault_step(name: str, world: World, environ) -> int | None:
    step = int(environ.get(name, "0") or 0)
    rank = environ.get(KILL_RANK_ENV)
    if not step or restart_count(environ) > 0 or (rank not in (None, "") and int(rank) != world.rank):
        return None
    return step


def _nan_losses_once(backend, step: int) -> None:
    original = backend.train_step
    pending = [step]

    def train_step(at, batch):
        losses, logits = original(at, batch)
        if pending and at == pending[0]:
            pending.clear()
            losses = losses * float("nan")
        return losses, logits
    backend.train_step = train_step


def rank_meter_names(chosen: list[str], world: World) -> list[str]:
    """Of the meters a process on this host would open, those this rank reads."""
    if world.reads_host_energy:
        return list(chosen)
    return [name for name in chosen if name not in HOST_WIDE_METERS]


def sum_counts(per_rank: list[dict]) -> dict:
    """Counters of one epoch from every rank -> world totals (throttled seconds: the longest)."""
    out = {k: sum(r[k] for r in per_rank) for k in per_rank[0] if k != "throttled"}
    if "throttled" in per_rank[0]:
        out["throttled"] = max(r["throttled"] for r in per_rank)
    return out


def combine_energy(windows: list[dict], world_size: int) -> dict:
    """One training window's energy fields from every rank (rank 0 first) -> the world's: joules
    summed over the ranks that read a meter, the rest taken from rank 0's window."""
    base = dict(windows[0])
    read = [w for w in windows if w.get("energy_j") is not None]
    base["ranks"] = world_size
    base["energy_readers"] = len(read)
    if not read:
        return base
    base["energy_j"] = sum(w["energy_j"] for w in read)
    components: dict[str, float] = {}
    for w in read:
        for name, j in (w.get("energy_by_component") or {}).items():
            components[name] = components.get(name, 0.0) + j
    base["energy_by_component"] = components
    base["energy_source"] = "+".join(dict.fromkeys(p for w in read for p in w["energy_source"].split("+")))
    base["energy_coverage"] = min(w.get("energy_coverage") or 0.0 for w in read)
    shared = [w["energy_shared_with"] for w in read if w.get("energy_shared_with") is not None]
    if shared:      # a rank's GPU with others on it (its own ranks included) makes the total shared
        base["energy_shared_with"] = max(shared)
        if max(shared) and not base["energy_method"].endswith("+shared"):
            base["energy_method"] += "+shared"
    duration = base.get("energy_window_s")
    base["avg_power_w"] = base["energy_j"] / duration if duration else None
    if len(read) > 1:
        base["peak_power_w"] = None    # the ranks' peaks need not coincide: their sum is no peak
    temps = [w["max_temp_c"] for w in windows if w.get("max_temp_c") is not None]
    base["max_temp_c"] = max(temps) if temps else None
    base["throttle_reasons"] = sorted({r for w in windows for r in (w.get("throttle_reasons") or [])})
    if base.get("idle_power_w") is not None and duration:
        base["energy_net_j"] = base["energy_j"] - base["idle_power_w"] * duration
    return base


class ShardedPlans:
    """A strategy whose every epoch plan is cut to this rank's share (strided, equal shares).
    Augmentation is drawn per sample (data/augment.py), so it draws nothing from the plan
    generator that every rank keeps identical."""

    def __init__(self, base, world: World, seed: int):
        self.base = base
        self.world = world
        self.seed = seed

    def __getattr__(self, name):        # everything but plan() is the strategy's own
        if name == "base":              # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    def plan(self, epoch: int) -> Plan:
        plan = self.base.plan(epoch)
        weights = None if plan.weights is None else shard_positions(plan.weights, self.world)
        # Equal shares (every rank the same steps): the world's count of planned samples left out.
        info = {**plan.info, "shard_samples_untrained": untrained_tail(len(plan.positions), self.world)}
        return Plan(shard_positions(plan.positions, self.world), weights, info)


def _no_forward_buffer_sync() -> dict:
    """Rank 0's BatchNorm statistics are the ones evaluated and saved: no broadcast before every
    forward. Newer torch names the option forward_sync_buffers; older builds (Jetson wheels) only
    know broadcast_buffers."""
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


class _TrainThroughDDP:
    """Training forwards go through DDP (so backward all-reduces the gradients); evaluation
    forwards use the plain module and involve no other rank."""

    def __init__(self, ddp, plain):
        self.ddp, self.plain = ddp, plain

    def __call__(self, x):
        if torch.is_grad_enabled() and self.ddp.module.training:
            return self.ddp(x)
        return self.plain(x)


@dataclass
class RankSync:
    world: World
    device: torch.device
    restart: int = 0
    resumed_from_epoch: int | None = None
    ddp: object = field(default=None, repr=False)

    @classmethod
    def join(cls, world: World, device_name: str) -> "RankSync":
        """Join torchrun's process group (gloo on CPU, nccl on CUDA)."""
        if device_name == "mps":
            raise InputError("--device mps: pretraining under torchrun needs cpu or cuda")
        device = init(world, device_name)
        barrier(world)
        return cls(world, device, restart_count())

    @property
    def evaluates(self) -> bool:
        return self.world.is_main

    @staticmethod
    def refuse_unsupported(cfg, energy, resume_state: dict | None) -> None:
        if cfg.strategy != "dense" or cfg.backend != "torch":
            raise InputError("torchrun: only dense training with the torch backend is distributed")
        if energy is not None and energy.budget_j is not None:
            raise InputError("--energy-budget: not supported under torchrun (each rank would stop at its own step)")
        if cfg.time_budget_s is not None:
            raise InputError("--time-budget: not supported under torchrun (each rank would stop at its own step)")
        if cfg.set_gains_steps > 0:        # the default (-1, sized) ships none under torchrun
            raise InputError("--set-gains-steps: not supported under torchrun (rank 0 alone would train the sets while "
                             "the other ranks wait); measure them in a pretrain without torchrun")
        if resume_state is not None and resume_state.get("progress") is not None:
            raise InputError("--resume: this run stopped inside an epoch; finish that epoch without torchrun first "
                             "(distributed runs checkpoint at epoch ends only)")

    def shard(self, strategy, seed: int) -> ShardedPlans:
        return ShardedPlans(strategy, self.world, seed)

    def open_meter(self, energy, gpu_uuids):
        """This rank's meter: the host-wide meters on local rank 0 only (see the module note)."""
        if self.world.reads_host_energy:
            return energy.open(gpu_uuids)
        from edge_sel.energy import EnergyMeter, open_meter
        probe = open_meter(energy.meters or None, watts_per_core=energy.watts_per_core, rails=energy.rails,
                           interval_s=energy.interval_s, gpu_uuids=gpu_uuids)
        keep = rank_meter_names([m.name for m in probe.meters], self.world)
        skipped = dict(probe.skipped)
        for m in probe.meters:
            if m.name not in keep:
                skipped[m.name] = "read by local rank 0 for the whole host"
                m.close()
        meter = EnergyMeter([m for m in probe.meters if m.name in keep], None, interval_s=energy.interval_s,
                            skipped=skipped, sysfs_root=probe.sysfs_root)
        return meter.start()

    def build_trainer(self, build, cfg):
        """Rank 0 measures the memory layout and precision; the others take its choice, since DDP
        needs the same parameter layout on every rank (and the same arithmetic)."""
        trainer = build() if self.world.is_main else None
        chosen = [(cfg.memory_format, cfg.eval_batch_size, cfg.precision, cfg.eval_precision)]
        dist.broadcast_object_list(chosen, src=0, device=self.device if self.device.type == "cuda" else None)
        if not self.world.is_main:
            cfg.memory_format, cfg.eval_batch_size, cfg.precision, cfg.eval_precision = chosen[0]
            trainer = build()
        self._attach(trainer, cfg)
        return trainer

    def _attach(self, trainer, cfg) -> None:
        model = trainer.model
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, **_no_forward_buffer_sync())
        train_forward = torch.compile(self.ddp) if cfg.compile else self.ddp
        trainer.backend.forward = _TrainThroughDDP(train_forward, trainer.backend.forward)
        trainer._kill_at_step = fault_kill_step(self.world)
        nan_step = fault_nan_step(self.world)
        if nan_step is not None:
            _nan_losses_once(trainer.backend, nan_step)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on one (a non-finite loss there: all roll back,
        or the others would run ahead into a collective it never joins)."""
        t = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def world_rolled_back(self, lost: dict) -> dict:
        """What every rank threw away in a rollback, held by rank 0 alone (its records and state
        are the run's; the other ranks count nothing, so no sum counts it twice). The ranks' seconds
        ran side by side: the longest."""
        gathered: list = [None] * self.world.size
        dist.all_gather_object(gathered, lost)
        if not self.world.is_main:
            return {k: type(v)(0) for k, v in lost.items()}
        return {k: max(g[k] for g in gathered) if k == "s" else sum(g[k] for g in gathered) for k in lost}

    def rank_zero_state(self, load) -> dict:
        """Rank 0's last checkpoint (`load()` runs there) on every rank: only rank 0 keeps a state
        directory, and every rank must roll back to the same weights."""
        # Sent as the checkpoint file's own bytes: pickled tensor storages do not survive the trip.
        box = [encode(load()) if self.world.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return decode(box[0])

    def combine_epoch(self, progress, energy: dict, scoring: dict) -> None:
        """Replace this rank's epoch counters (in `progress`, `energy`, `scoring`) by world totals."""
        mine = {**{k: getattr(progress, k) for k in COUNTERS},
                "scoring_samples": scoring["samples"], "scoring_flops": scoring["flops"]}
        gathered: list = [None] * self.world.size
        dist.all_gather_object(gathered, (mine, energy))
        totals = sum_counts([g[0] for g in gathered])
        for k in COUNTERS:
            setattr(progress, k, totals[k])
        scoring["samples"], scoring["flops"] = totals["scoring_samples"], totals["scoring_flops"]
        for t in (progress.emb.sum, progress.emb.count):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        world_energy = combine_energy([g[1] for g in gathered], self.world.size)
        energy.clear()
        energy.update(world_energy)
        energy["torchrun_restart"] = self.restart

    def describe(self) -> dict:
        backend = dist.get_backend() if dist.is_initialized() else None
        return {"world_size": self.world.size, "backend": backend, "restart_count": self.restart,
                "resumed_from_epoch": self.resumed_from_epoch, "run_id": os.environ.get(RUN_ID_ENV),
                "checkpoints": "epoch ends only, written by rank 0",
                "evaluation": "rank 0 only", "per_rank_batch_size": True}

    def finish(self, trainer) -> None:
        """Every rank waits until rank 0 has written the run, then leaves the process group.

        DDP holds the process group: while it lives, gloo's threads outlive destroy_process_group
        and are torn down as the interpreter exits, where a rank could abort (SIGABRT) after the
        run was written, and torchrun reported the finished job failed. So DDP is dropped first
        (the collector run for any cycle that still holds it) and the group's threads end here."""
        barrier(self.world)
        if isinstance(trainer.backend.forward, _TrainThroughDDP):
            trainer.backend.forward = trainer.backend.forward.plain
        self.ddp = None
        gc.collect()
        shutdown(self.world)
