"""The diagonal (empirical) Fisher information of a model's trainable parameters: the mean over
samples of the squared per-sample gradient of the cross-entropy with the true label, taken with
the model in eval mode (BatchNorm on its running statistics, as a deployed model predicts).

Where every trainable parameter sits in a plain Linear, convolution or BatchNorm layer, the
squared per-sample gradients follow from one batched forward and backward: each layer's input and
output gradient give its per-sample weight gradients (the products a weight gradient sums over
the batch, kept apart). Other models take per-sample gradients from torch.func (functional_call
+ vmap + grad) in chunks, and a model vmap cannot run (data-dependent control flow, in-place
updates of buffers, ...) one backward pass per sample. All three give the same numbers. Every
sample is counted as one forward and one backward of batch size 1 in eval mode (FlopCounter).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from edge_sel.core.flops import FlopCounter
from edge_sel.data import BatchLoader, IndexedDataset
from edge_sel.device_caps import accumulator_dtype

# Per-sample gradients held at once (chunk x parameters x 4 bytes): larger chunks measured slower
# on CPU, where squaring them is bound by memory traffic.
CHUNK_BYTES = 32 * 2**20
MAX_CHUNK = 64


@dataclass
class FisherResult:
    fisher: dict[str, torch.Tensor]   # trainable parameter name -> mean squared gradient (fp32, CPU)
    samples: int
    flops: int                        # counted: (forward + backward of one sample) x samples
    wall_s: float
    method: str                       # "per-layer", "vmap" or "loop"


def fisher_positions(n_train: int, samples: int, seed: int) -> torch.Tensor:
    """A seeded draw of `samples` training positions (all of them when there are fewer)."""
    draw = torch.Generator().manual_seed(seed + 15485863)
    return torch.randperm(n_train, generator=draw)[:samples].sort().values


def chunk_size(params: dict[str, torch.Tensor], per_layer: bool) -> int:
    """Samples per chunk: per layer, one layer's per-sample gradients are held at a time; vmap and
    the loop hold every parameter's."""
    sizes = [p.numel() for p in params.values()] or [1]
    per_sample = 4 * (max(sizes) if per_layer else sum(sizes))
    return max(1, min(MAX_CHUNK, CHUNK_BYTES // per_sample))


def per_sample_grads_vmap(model: nn.Module, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    def loss_of_one(p, xi, yi):
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(logits.float(), yi.unsqueeze(0))
    return vmap(grad(loss_of_one), in_dims=(None, 0, 0))(params, x, y)


def per_sample_grads_loop(model: nn.Module, params: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    names = list(params)
    tensors = [params[n] for n in names]
    rows = {n: [] for n in names}
    for i in range(len(y)):
        loss = nn.functional.cross_entropy(model(x[i:i + 1]).float(), y[i:i + 1])
        for n, g in zip(names, torch.autograd.grad(loss, tensors, allow_unused=True)):
            rows[n].append(torch.zeros_like(params[n]) if g is None else g)
    return {n: torch.stack(rows[n]) for n in names}


class NotPerLayer(Exception):
    """The model has a trainable parameter the per-layer formulas do not cover."""


# Modules whose per-sample parameter gradients follow from their input and output gradient alone
# (with their own, unchanged forward).
PER_LAYER = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def per_layer_modules(model: nn.Module, params: dict) -> dict[str, nn.Module]:
    """The modules owning the trainable parameters, when every one is a plain layer of PER_LAYER
    (a subclass with its own forward, a shared parameter, BatchNorm on batch statistics or a
    padding mode other than zeros is not covered)."""
    owners, seen = {}, set()
    for name, module in model.named_modules():
        own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        kind = next((k for k in PER_LAYER if type(module) is k), None)
        if kind is None or set(own) - {"weight", "bias"}:
            raise NotPerLayer(f"{name}: {type(module).__name__}")
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None:
            raise NotPerLayer(f"{name}: BatchNorm without running statistics")
        if isinstance(module, nn.modules.conv._ConvNd) and (module.padding_mode != "zeros"
                                                             or isinstance(module.padding, str)):
            raise NotPerLayer(f"{name}: padding {module.padding!r} ({module.padding_mode})")
        owners[name] = module
        seen.update(f"{name}.{n}" if name else n for n in own)
    if seen != set(params):
        raise NotPerLayer("parameters shared between modules")
    return owners


def unfold_input(module: nn.modules.conv._ConvNd, a: torch.Tensor) -> torch.Tensor:
    """A convolution's input as columns: B x (C_in k...) x L (1-d and 3-d through 2-d views)."""
    if isinstance(module, nn.Conv1d):
        a = a.unsqueeze(-1)
        k, d, p, s = (module.kernel_size[0], 1), (module.dilation[0], 1), (module.padding[0], 0), (module.stride[0], 1)
        return nn.functional.unfold(a, k, d, p, s)
    if isinstance(module, nn.Conv2d):
        return nn.functional.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)
    # 3-d: pad, then gather every kernel offset as a strided view
    kd, kh, kw = module.kernel_size
    a = nn.functional.pad(a, [p for p in reversed(module.padding) for _ in (0, 1)])
    for dim, (k, st, dl) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
        a = a.unfold(2 + dim, dl * (k - 1) + 1, st)[..., ::dl]
    # B x C x oD x oH x oW x kd x kh x kw -> B x (C kd kh kw) x L
    b, c = a.shape[:2]
    return a.permute(0, 1, 5, 6, 7, 2, 3, 4).reshape(b, c * kd * kh * kw, -1)


def summed_squared_products(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """sum over b of (g[b] @ a[b]^T)**2 for g: B x G x O x L, a: B x G x I x L (per group): each
    sample's weight gradient, squared, summed. Where the positions L are few, as pairs of positions
    in one matrix product (sum_b sum_l,l' g_ol g_ol' a_il a_il'), which never holds B gradients of
    O x I at once; else per sample (a batched product, then squares)."""
    b, groups, o, positions = g.shape
    i = a.shape[2]
    if positions * positions * (o + i) <= o * i:
        pairs_g = (g.unsqueeze(-1) * g.unsqueeze(-2)).permute(1, 2, 0, 3, 4).reshape(groups, o, -1)
        pairs_a = (a.unsqueeze(-1) * a.unsqueeze(-2)).permute(1, 2, 0, 3, 4).reshape(groups, i, -1)
        return torch.bmm(pairs_g, pairs_a.transpose(1, 2))
    per_sample = torch.matmul(g, a.transpose(-1, -2))             # B x G x O x I
    return per_sample.mul_(per_sample).sum(0)


def squared_layer_grads(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sum over the batch of each sample's squared gradient of the module's weight and bias, from
    its input `a` and the gradient `g` of its output (each sample's own loss)."""
    b = a.shape[0]
    out = {}
    if isinstance(module, nn.Linear):
        a, g = a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])       # B x T x I, B x T x O
        out["weight"] = summed_squared_products(g.transpose(1, 2).unsqueeze(1), a.transpose(1, 2).unsqueeze(1))[0]
        bias = g.sum(1)
    elif isinstance(module, nn.modules.conv._ConvNd):
        groups = module.groups
        cols = unfold_input(module, a)                          # B x (C_in k) x L
        g = g.reshape(b, module.out_channels, -1)               # B x C_out x L
        squared = summed_squared_products(g.reshape(b, groups, -1, g.shape[-1]),
                                          cols.reshape(b, groups, -1, cols.shape[-1]))
        out["weight"] = squared.reshape(module.weight.shape)
        bias = g.sum(2)
    else:                                                       # BatchNorm on running statistics
        shape = [1, -1] + [1] * (a.dim() - 2)
        x_hat = (a - module.running_mean.view(shape)) * torch.rsqrt(module.running_var.view(shape) + module.eps)
        keep = list(range(2, a.dim()))
        out["weight"] = (g * x_hat).sum(keep).square().sum(0) if keep else (g * x_hat).square().sum(0)
        bias = g.sum(keep) if keep else g
    if module.bias is not None:
        out["bias"] = bias.square().sum(0)
    return out


def squared_grads_per_layer(model: nn.Module, owners: dict[str, nn.Module], x: torch.Tensor,
                            y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sum over the chunk of squared per-sample gradients from one batched forward and backward:
    in eval mode the samples do not interact, so the gradient of the summed loss at each layer's
    output holds every sample's own."""
    inputs, grads, handles = {}, {}, []

    def watch(name):
        def hook(module, args, output):
            if name in inputs:
                raise NotPerLayer(f"{name}: called more than once")
            inputs[name] = args[0].detach()
            # registered before any in-place op on the output: receives the gradient of this output
            output.register_hook(lambda grad: grads.__setitem__(name, grad.detach()))
        return hook
    try:
        for name, module in owners.items():
            handles.append(module.register_forward_hook(watch(name)))
        # The backward is asked for the input's gradient only: every layer's output gradient flows
        # (the hooks take it), and no batched weight gradient is formed that nobody reads.
        x = x.detach().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x).float(), y, reduction="sum")
        torch.autograd.grad(loss, x)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, module in owners.items():
        for local, value in squared_layer_grads(module, inputs[name].float(), grads[name].float()).items():
            if getattr(module, local).requires_grad:
                out[f"{name}.{local}" if name else local] = value
    return out


def diagonal_fisher(model: nn.Module, dataset: IndexedDataset, positions: torch.Tensor, mean, std,
                    flops: FlopCounter | None = None, memory_format=torch.contiguous_format,
                    method: str = "auto", check=None) -> FisherResult:
    """Fisher of every parameter with requires_grad at the model's current weights over the samples
    at `positions` of `dataset` (unaugmented, normalised as training sees them). `method`: "auto"
    (per layer where every trainable parameter is in a plain layer, else vmap, else the loop),
    "per-layer", "vmap" or "loop": the same numbers up to float rounding. The model's mode is restored.
    `check()`, before each chunk, raises where the pass must stop (a stop signal, a budget)."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    totals = {n: torch.zeros_like(p, dtype=accumulator_dtype(p.device)) for n, p in params.items()}
    owners = None
    if method in ("auto", "per-layer"):
        try:
            owners = per_layer_modules(model, params)
        except NotPerLayer:
            if method == "per-layer":
                raise
    loader = BatchLoader(dataset, mean, std, chunk_size(params, owners is not None), augment=False,
                         generator=torch.Generator(), memory_format=memory_format)
    chosen = {"auto": "per-layer" if owners is not None else "vmap"}.get(method, method)
    ran = False         # a method that ran on one chunk and fails on another is not at its limit: raise
    try:
        for batch in loader.batches(torch.as_tensor(positions, dtype=torch.long)):
            if check is not None:
                check()
            x, y = batch.x, batch.y
            squared = None
            if chosen == "per-layer":
                try:
                    with torch.enable_grad():
                        squared = squared_grads_per_layer(model, owners, x, y)
                except NotPerLayer:
                    if method != "auto" or ran:
                        raise
                    chosen = "vmap"
            if chosen == "vmap":
                try:
                    squared = {n: g.square().sum(0) for n, g in per_sample_grads_vmap(model, params, buffers, x, y).items()}
                except (RuntimeError, NotImplementedError, ValueError, TypeError):
                    if method != "auto" or ran:
                        raise
                    chosen = "loop"
            if chosen == "loop":
                with torch.enable_grad():
                    live = dict(model.named_parameters())
                    squared = {n: g.square().sum(0) for n, g in
                               per_sample_grads_loop(model, {n: live[n] for n in params}, x, y).items()}
            ran = True
            for n, value in squared.items():
                totals[n] += value.detach().to(totals[n].dtype)
    finally:
        model.train(was_training)
    n = len(positions)
    fisher = {name: (t / max(n, 1)).float().cpu() for name, t in totals.items()}
    counted = 0
    if flops is not None and n:
        forward, backward = flops.eval_gradient(1)
        counted = (forward + backward) * n
    return FisherResult(fisher, n, counted, time.perf_counter() - t0, chosen)
