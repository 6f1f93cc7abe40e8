"""What the training step accumulates between host reads."""

from __future__ import annotations

import torch

from edge_sel.device_caps import accumulator_dtype


class StepTotals:
    """Loss sum, correct count and non-finite count of the steps since the last host read, and the
    last step's mean loss, kept on the training device: reading them back stalls a GPU, so the
    loop reads them once every `sync_every` steps (and before checkpoints and records)."""

    def __init__(self, device: torch.device):
        self.buf = torch.zeros(3, dtype=accumulator_dtype(device), device=device)
        self.last: torch.Tensor | None = None
        self.pending = 0

    def add(self, losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.last = losses.mean()          # in the losses' own dtype: what a resumed epoch restores
        losses = losses.to(self.buf.dtype)
        self.buf += torch.stack([losses.sum(), (logits.argmax(1) == labels).sum().to(self.buf.dtype),
                                 (~torch.isfinite(losses)).sum().to(self.buf.dtype)])
        self.pending += 1

    def read(self) -> tuple[float, int, int, float | None]:
        """(loss sum, correct, non-finite, last mean loss) of the steps added since the last read (at
        least one): one host read."""
        values = torch.cat([self.buf, self.last.reshape(1).to(self.buf.dtype)]).tolist()
        self.buf.zero_()
        self.pending = 0
        loss_sum, correct, bad, last = values
        return loss_sum, int(correct), int(bad), last
