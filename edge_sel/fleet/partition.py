"""Split one training set into client shards: iid (stratified) or non-iid (Dirichlet over classes).
Each sample lands in exactly one shard, and the same seed gives the same shards."""

from __future__ import annotations

import torch

from edge_sel.errors import InputError

SCHEMES = ("iid", "dirichlet")


def iid_partition(labels: torch.Tensor, num_parts: int, seed: int) -> list[torch.Tensor]:
    """Every class dealt round-robin over the parts after a seeded shuffle: equal class shares."""
    g = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in range(num_parts)]
    offset = 0
    for c in labels.unique(sorted=True).tolist():
        pos = (labels == c).nonzero().flatten()
        pos = pos[torch.randperm(len(pos), generator=g)]
        for p in range(num_parts):
            parts[(p + offset) % num_parts].append(pos[p::num_parts])
        offset += len(pos) % num_parts     # the next class's remainder starts where this one stopped
    return [torch.cat(p).sort().values if p else torch.zeros(0, dtype=torch.long) for p in parts]


def dirichlet_partition(labels: torch.Tensor, num_parts: int, alpha: float, seed: int) -> list[torch.Tensor]:
    """Each class's samples spread over the parts in proportions drawn from Dirichlet(alpha):
    a small alpha gives each client a few dominant classes, a large one approaches iid."""
    g = torch.Generator().manual_seed(seed)
    concentration = torch.full((num_parts,), float(alpha), dtype=torch.float64)
    parts: list[list[torch.Tensor]] = [[] for _ in range(num_parts)]
    for c in labels.unique(sorted=True).tolist():
        pos = (labels == c).nonzero().flatten()
        pos = pos[torch.randperm(len(pos), generator=g)]
        shares = _dirichlet(concentration, g)
        cuts = (shares.cumsum(0) * len(pos)).round().long().tolist()[:-1]
        for p, chunk in enumerate(torch.tensor_split(pos, cuts)):
            parts[p].append(chunk)
    return [torch.cat(p).sort().values for p in parts]


def _dirichlet(concentration: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A seeded Dirichlet draw (torch's distribution takes no generator): normalised Gamma draws,
    each Gamma(a) as Gamma(a + 1) * U^(1/a) by Marsaglia-Tsang, which needs a >= 1."""
    a = concentration + 1
    d = a - 1 / 3
    c = 1 / torch.sqrt(9 * d)
    out = torch.empty_like(a)
    for i in range(len(a)):
        while True:
            x = torch.randn(1, generator=g, dtype=torch.float64)
            v = (1 + c[i] * x) ** 3
            u = torch.rand(1, generator=g, dtype=torch.float64)
            if v > 0 and torch.log(u) < 0.5 * x * x + d[i] - d[i] * v + d[i] * torch.log(v):
                out[i] = d[i] * v
                break
    out = out * torch.rand(len(a), generator=g, dtype=torch.float64) ** (1 / concentration)
    total = out.sum()
    return out / total if total > 0 else torch.full_like(out, 1 / len(out))


def partition(labels: torch.Tensor, num_parts: int, scheme: str = "iid", alpha: float = 0.5,
              seed: int = 0) -> list[torch.Tensor]:
    """Positions of each part (sorted), for labels of one training set."""
    if scheme not in SCHEMES:
        raise InputError(f"partition scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if not isinstance(num_parts, int) or num_parts < 1:
        raise InputError(f"number of partitions must be a positive whole number, got {num_parts!r}")
    labels = torch.as_tensor(labels).cpu()
    if scheme == "iid":
        return iid_partition(labels, num_parts, seed)
    if not alpha > 0:
        raise InputError(f"dirichlet alpha must be > 0, got {alpha!r}")
    return dirichlet_partition(labels, num_parts, alpha, seed)
