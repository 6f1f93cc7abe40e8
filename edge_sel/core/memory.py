"""Counted training memory: what one step keeps, counted on a meta-device twin (nothing allocated).

Like FLOPs (core/flops.py), a step's memory is counted, not modelled: a twin of the model on the
`meta` device runs the real step (forward, loss, backward, the optimizer's own step) while a dispatch
mode follows every storage the step creates until autograd or Python frees it. The high-water mark
of those live bytes, over what exists before the step (weights, optimizer state, the batch), is the
step's counted peak. Its parts at that instant:

- activations: tensors autograd saved for backward (saved_tensors_hooks; distinct storages, not the
  parameters, not the batch) still held;
- gradients: parameter gradients already written;
- transient: everything else then alive (outputs not saved, gradients of activations in flight);
- workspace: what the running kernel holds for itself, which no dispatcher sees: for CPU
  convolutions estimated by core/kernel_workspace.py's measured rule (`kernels="cpu"`), else 0.

What it cannot see: other kernels' own buffers (cuDNN's), the allocator's rounding and caching,
and the process's own code and libraries; the measured peak (engine side) is the independent check. Counted for fp32 tensors; on CUDA the optimizer's
multi-tensor path allocates more than the per-tensor loop counted here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from functools import partial

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from edge_sel.core import measuring
from edge_sel.core.count_keys import count_key, optimizer_key, structure_key
from edge_sel.core.kernel_workspace import convolution_workspace
from edge_sel.core.meta_outputs import MetaOutputs
from edge_sel.core.meta_twin import meta_twin
from edge_sel.core.micro_batches import bounds
from edge_sel.core.lean_saves import set_saves

MiB = 2 ** 20


@dataclass(frozen=True)
class StepShape:
    """How a step of `batch_size` samples runs: in micro-batches of `micro_batch` (gradients
    accumulated), with the named blocks recomputed in backward, BatchNorm statistics trained or frozen,
    and lean saves (core/lean_saves.py: frozen convolutions keep no input, norm-activation pairs run again)."""
    batch_size: int
    micro_batch: int = 0                     # 0: the whole batch at once
    recompute: tuple[str, ...] = ()
    bn_statistics: str = "train"             # "train" or "frozen" (running statistics, eval mode)
    lean: bool | tuple[str, ...] = False     # True: everywhere; names: only inside those blocks

    @property
    def chunk(self) -> int:
        return min(self.micro_batch or self.batch_size, self.batch_size)

    @property
    def chunks(self) -> int:
        return -(-self.batch_size // self.chunk)


@dataclass(frozen=True)
class MemoryCount:
    """Bytes of one training step; `peak` = weights + optimizer + batch + kept + activations +
    gradients + transient + workspace."""
    weights: int            # parameters and buffers
    optimizer: int          # optimizer state of what trains (after its first step)
    batch: int              # the step's inputs and labels
    activations: int        # saved for backward, alive at the peak
    gradients: int          # parameter gradients alive at the peak
    transient: int          # anything else alive at the peak
    workspace: int          # the running kernel's own buffers at the peak (estimated by rule)
    saved: int              # everything autograd saved for backward over the whole step (not parameters or batch)
    peak: int
    kept: int = 0           # copies the run keeps beside the model while it trains (the epoch's snapshot, penalties' anchors)

    def mib(self) -> dict:
        return {f"{k}_mb": round(v / MiB, 3) for k, v in asdict(self).items()}


def nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        ref = StorageWeakRef(t.untyped_storage())
        if ref.cdata not in seen:
            seen.add(ref.cdata)
            total += t.untyped_storage().nbytes()
    return total


class _LiveBytes(TorchDispatchMode):
    """The bytes of storages created under the mode and still alive, after every operation;
    storages that existed before (`outside`: weights, optimizer state, the batch) are not counted.
    Each storage gets a serial number when first seen: an address can be reused once it is freed.
    With `kernels="cpu"` each CPU convolution's own buffers are added while it runs (`threads`: the
    torch threads the real step will run on, which decide some kernels)."""

    def __init__(self, outside: set[int], kernels: str = "none", threads: int = 1, outputs: MetaOutputs | None = None):
        super().__init__()
        self.outside = outside
        self.kernels, self.threads = kernels, threads
        self.outputs = outputs                   # meta outputs reused across counts (None: every op runs)
        self.workspace = 0                      # the kernel's own bytes at the high-water mark
        self.live: dict[int, tuple[StorageWeakRef, int, int]] = {}
        self.total = 0                           # bytes in `live`, freed storages included until swept
        self.serials = 0
        self.peak = 0
        self.at_peak: dict[int, int] = {}        # serial -> bytes, at the high-water mark
        self.recent = 0                          # the high-water mark since it was last set (a part of the step)

    def alive(self) -> int:
        self._sweep()
        return self.total

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = self.outputs(func, args, kwargs or {}) if self.outputs is not None else func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.serial(t)
        own = convolution_workspace(func, args, out, self.threads) if self.kernels == "cpu" else 0
        # `total` counts storages freed since the last sweep too: only a level above both marks needs
        # the sweep that finds what is still alive (sweeping after every op was a tenth of a count).
        if self.total + own > min(self.recent, self.peak):
            self._sweep()
        now = self.total + own
        self.recent = max(self.recent, now)
        if now > self.peak:
            self.peak, self.workspace = now, own
            self.at_peak = {serial: n for _, n, serial in self.live.values()}
        return out

    def serial(self, t: torch.Tensor) -> int | None:
        """The serial number of a tensor's storage (None: it existed before the step)."""
        storage = t.untyped_storage()
        ref = StorageWeakRef(storage)
        if ref.cdata in self.outside:
            return None
        entry = self.live.get(ref.cdata)
        if entry is not None and entry[0].expired():       # a freed storage's address, reused
            self.total -= entry[1]
            entry = None
        if entry is None:
            self.serials += 1
            entry = self.live[ref.cdata] = (StorageWeakRef(storage), storage.nbytes(), self.serials)
            self.total += entry[1]
        return entry[2]

    def _sweep(self) -> None:
        for key in [k for k, (ref, _, _) in self.live.items() if ref.expired()]:
            self.total -= self.live.pop(key)[1]


def storage_key(t: torch.Tensor) -> int:
    return StorageWeakRef(t.untyped_storage()).cdata


class MemoryCounter:
    """Counts steps of a live model's current trainable set; one meta twin per counter, counts cached
    by (trainable set, step shape)."""

    def __init__(self, model: nn.Module, input_shape: list[int], optimizer_factory, loss_fn=None,
                 kernels: str = "none", step=None, store=None):
        self.model = model
        self.kernels = kernels          # "cpu": add CPU convolutions' own buffers (core/kernel_workspace.py)
        self.input_shape = list(input_shape)
        self.optimizer_factory = optimizer_factory      # params -> torch.optim.Optimizer
        self.loss_fn = loss_fn or (lambda logits, y: nn.functional.cross_entropy(logits, y, reduction="none"))
        # step(twin, optimizer) -> (run(x, y, micro_batch), kept tensors): the run's own step bound to the
        # twin (engine/loop/step_memory.py), and what the run keeps beside the model; None: plain_step.
        self.step = step
        # store.get(key) -> dict | None, store.put(key, dict): counts kept across runs on this device
        # (engine/machine/count_store.py), used where a step's key says what it depends on (core/count_keys.py).
        self.store = store
        self.on_count = None            # called with (counts made, seconds spent) after each new count
        self.counts_made, self.counts_read, self.seconds = 0, 0, 0.0
        self._structure: str | None = None
        self._twin: nn.Module | None = None
        self._cache: dict[tuple, MemoryCount] = {}
        self._optimizers: dict[tuple, torch.optim.Optimizer] = {}     # trainable set -> the twin's optimizer, its state made
        self._optimizer_extra: dict[tuple, int] = {}     # trainable set -> bytes its optimizer's step allocates
        self.outputs: MetaOutputs | None = MetaOutputs()  # meta outputs of the twin's ops, reused across counts

    def twin(self) -> nn.Module:
        if self._twin is None:
            twin = meta_twin(self.model)
            twin.__dict__.pop("forward", None)          # a bank's routing forward calls the live model
            self._twin = twin
        return self._twin

    def signature(self, trainable: set[str] | None = None) -> tuple:
        names = [n for n, _ in self.model.named_parameters()]
        if trainable is None:
            trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        return tuple(n in trainable for n in names)

    def count(self, shape: StepShape, trainable: set[str] | None = None) -> MemoryCount:
        """The counted memory of one step of `shape` training `trainable` (parameter names; default:
        what the live model trains now)."""
        signature = self.signature(trainable)
        key = (signature, shape)
        if key not in self._cache:
            t0 = time.perf_counter()
            kept_as = self.stored_key(signature, shape)
            found = self.store.get(kept_as) if kept_as is not None else None
            if found is not None and set(found) == {f.name for f in fields(MemoryCount)}:
                self._cache[key] = MemoryCount(**found)
                self.counts_read += 1
            else:
                if kept_as is not None:     # a count a child can keep for this run to read (core/measuring.py)
                    measuring.need("a step's count")
                self._cache[key] = self._count(signature, shape)
                self.counts_made += 1
                if kept_as is not None:
                    self.store.put(kept_as, asdict(self._cache[key]))
            self.seconds += time.perf_counter() - t0
            if self.on_count is not None:
                self.on_count(self.counts_made, self.seconds)
        return self._cache[key]

    def stored_key(self, signature: tuple, shape: StepShape) -> str | None:
        """The key a count of this step is kept under on the device, or None where the step or the
        optimizer cannot name what they depend on (then it is always counted)."""
        step_key = getattr(self.step, "key", None)
        optimizer = optimizer_key(self.optimizer_factory)
        if self.store is None or step_key is None or optimizer is None:
            return None
        if self._structure is None:
            self._structure = structure_key(self.twin()) or ""     # "": its code cannot be read
        if not self._structure:
            return None
        return count_key(self._structure, self.input_shape, optimizer, step_key, self.kernels, signature, shape)

    def count_forward(self, batch_size: int, train_mode: bool = False) -> MemoryCount:
        """The counted memory of a forward-only pass (no gradients) of `batch_size` inputs: an
        evaluation or scoring pass (eval mode), or a BatchNorm re-estimation (train mode: each layer
        normalises with the batch's statistics). Nothing is saved for backward: its peak over the
        weights and the batch is all transient."""
        key = ("forward", batch_size, train_mode)
        if key not in self._cache:
            twin = self.twin()
            twin.train(train_mode)
            weights = nbytes([*twin.parameters(), *twin.buffers()])
            x = torch.zeros(batch_size, *self.input_shape, device="meta")
            mode = _LiveBytes({storage_key(t) for t in [*twin.parameters(), *twin.buffers(), x]},
                              self.kernels, torch.get_num_threads(), self.outputs)
            with mode, torch.no_grad():
                twin(x)
            batch = nbytes([x])
            self._cache[key] = MemoryCount(weights, 0, batch, 0, 0, mode.peak - mode.workspace, mode.workspace, 0,
                                           weights + batch + mode.peak)
        return self._cache[key]

    def _optimizer_step_counted(self, optimizer, signature: tuple, mode: _LiveBytes) -> None:
        """The optimizer's step, counted once per trainable set: what it allocates over what is alive when
        it starts depends on the set alone, so later shapes of the set count an allocation of those bytes
        instead of running it again (it was a third of a count's time on the meta device)."""
        extra = self._optimizer_extra.get(signature)
        real = optimizer.step
        if extra is None:
            def step(*args, **kwargs):
                start = mode.alive()
                mode.recent = start
                out = real(*args, **kwargs)
                self._optimizer_extra[signature] = max(0, mode.recent - start)
                return out
        else:
            def step(*args, **kwargs):
                if extra:
                    torch.empty(extra, dtype=torch.uint8, device="meta")
        optimizer.step = step

    def _count(self, signature: tuple, shape: StepShape) -> MemoryCount:
        twin = self.twin()
        params = list(twin.parameters())
        for p, trains in zip(params, signature):
            p.requires_grad_(trains)
            p.grad = None
        set_saves(twin, shape.recompute, shape.lean)
        twin.train()
        if shape.bn_statistics == "frozen":
            for m in twin.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        trained = [p for p in params if p.requires_grad]
        weights = nbytes([*twin.parameters(), *twin.buffers()])
        optimizer = self._optimizers.get(signature)
        if trained and optimizer is None:
            # The optimizer's state as it is from the second step on: one step on zero gradients (once per
            # trainable set: every shape of the set steps the same optimizer).
            optimizer = self._optimizers[signature] = self.optimizer_factory(trained)
            for p in trained:
                p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state = [v for s in (optimizer.state.values() if optimizer else ()) for v in s.values()
                 if isinstance(v, torch.Tensor)]
        optimizer_bytes = nbytes(state) if state else 0
        run, kept = (self.step or partial(plain_step, loss_fn=self.loss_fn))(twin, optimizer)
        kept_bytes = nbytes(kept) if kept else 0
        x = torch.zeros(shape.batch_size, *self.input_shape, device="meta")
        y = torch.zeros(shape.batch_size, dtype=torch.long, device="meta")
        batch = nbytes([x, y])
        # Two micro-batches meet everything the step keeps (the second meets the gradients the first
        # accumulated); the ones after repeat the second: their saved bytes are added, not run.
        rows = min(shape.batch_size, 2 * shape.chunk)
        outside = {storage_key(t) for t in [*twin.parameters(), *twin.buffers(), *state, *kept, x, y]}
        mode = _LiveBytes(outside, self.kernels, torch.get_num_threads(), self.outputs)
        saved: dict[int, tuple[int, int]] = {}      # serial -> (bytes, micro-batch) of every storage autograd saved
        chunk = [-1]
        counting = twin.register_forward_pre_hook(lambda *_: chunk.__setitem__(0, chunk[0] + 1))

        def keep(t):
            serial = mode.serial(t)
            if serial is not None and serial not in saved:
                saved[serial] = (t.untyped_storage().nbytes(), max(chunk[0], 0))
            return t

        if optimizer is not None:
            self._optimizer_step_counted(optimizer, signature, mode)
        try:
            with mode, torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
                run(x[:rows], y[:rows], shape.chunk if shape.chunk < rows else 0)
                gradients = {mode.serial(p.grad) for p in trained if p.grad is not None}
        finally:
            counting.remove()
        optimizer.__dict__.pop("step", None) if optimizer is not None else None
        for p in params:
            p.grad = None
        by_chunk = [sum(n for n, c in saved.values() if c == k) for k in range(max(chunk[0], 0) + 1)]
        saved_total = sum(by_chunk)
        if rows < shape.batch_size:
            saved_total += round(by_chunk[-1] * (shape.batch_size - rows) / shape.chunk)
        set_saves(twin)
        at_peak = mode.at_peak
        activations = sum(n for k, n in at_peak.items() if k in saved)
        grads = sum(n for k, n in at_peak.items() if k in gradients and k not in saved)
        transient = mode.peak - mode.workspace - activations - grads
        return MemoryCount(weights, optimizer_bytes, batch, activations, grads, transient, mode.workspace,
                           saved_total, weights + optimizer_bytes + batch + kept_bytes + mode.peak, kept_bytes)


def plain_step(twin: nn.Module, optimizer, loss_fn):
    """A step of per-sample losses, their batch mean, backward and the optimizer's step: a run's step
    without penalties, replay or an updater's own tensors (engine/loop/step_memory.py counts those)."""
    def run(x, y, micro_batch: int):
        for start, end in bounds(len(y), micro_batch):
            loss = loss_fn(twin(x[start:end]), y[start:end]).sum() / len(y)
            if loss.requires_grad:
                loss.backward()
            del loss
        if optimizer is not None:
            optimizer.step()
    return run, []
