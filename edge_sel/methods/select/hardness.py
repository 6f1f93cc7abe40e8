"""Per-sample hardness of the run's training set, filled only from the training forward passes of
samples actually trained: the free signals that gates decide on, stale for samples not revisited.

Keyed by the dataset's stable sample id (`batch.index`). Slot i of every tensor is the sample at
position i of the run's training set, so a plan's positions index the store directly, and a saved
store is matched back by id (a resumed run with another order or subset lines up)."""

from __future__ import annotations

import math

import torch

from edge_sel.device_caps import accumulator_dtype

SIGNALS = ("loss", "dloss", "flip")
PER_SAMPLE = ("last_loss", "last_entropy", "last_correct", "loss_change", "flip", "dih", "dih_updates",
              "last_epoch", "visits", "lr_mark", "label", "last_pred", "last_conf")


class HardnessStore:
    def __init__(self, index: torch.Tensor, num_classes: int, gamma: float = 0.95, signal: str = "loss",
                 lr_normalised: bool = False):
        if signal not in SIGNALS:
            raise ValueError(signal)
        self.index = index.detach().long()
        self.device = self.index.device
        self.num_classes = num_classes
        self.gamma, self.signal, self.lr_normalised = gamma, signal, lr_normalised
        self._sorted_ids, self._sorted_slots = torch.sort(self.index)
        n, dev = len(self.index), self.device
        self.last_loss = torch.zeros(n, device=dev)
        self.last_entropy = torch.zeros(n, device=dev)
        self.last_correct = torch.zeros(n, device=dev)
        self.label = torch.full((n,), -1, dtype=torch.long, device=dev)   # the label trained on
        self.last_pred = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.last_conf = torch.zeros(n, device=dev)        # probability of the predicted class
        self.loss_change = torch.zeros(n, device=dev)      # |loss - loss at the visit before|
        self.flip = torch.zeros(n, device=dev)             # |correct - correct at the visit before|
        self.dih = torch.zeros(n, device=dev)              # moving average of the chosen signal
        self.dih_updates = torch.zeros(n, dtype=torch.long, device=dev)
        self.last_epoch = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.visits = torch.zeros(n, dtype=torch.long, device=dev)
        # Learning-rate sum at each sample's last visit: the rate-normalised signals divide by the
        # sum of learning rates of the steps taken between two visits (DIHCL Eq. 2).
        self.lr_mark = torch.zeros(n, dtype=accumulator_dtype(dev), device=dev)
        self.cum_lr = 0.0
        self.prev_lr: float | None = None

    def __len__(self) -> int:
        return len(self.index)

    # -- lookup -------------------------------------------------------------------------------
    def slots(self, ids: torch.Tensor) -> torch.Tensor:
        """Slots (= training-set positions) of stable sample ids; unknown ids are an error."""
        ids = ids.to(self.device).long()
        where = torch.searchsorted(self._sorted_ids, ids).clamp_max(len(self) - 1)
        if len(ids) and not torch.equal(self._sorted_ids[where], ids):
            raise KeyError("sample ids not in this run's training set")
        return self._sorted_slots[where]

    @property
    def seen(self) -> torch.Tensor:
        return self.visits > 0

    @property
    def dih_known(self) -> torch.Tensor:
        return self.dih_updates > 0

    # -- updates ------------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, ids: torch.Tensor, losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                epoch: int, lr: float, weight: torch.Tensor | None = None) -> None:
        """Record the training forward pass of the samples `ids` (losses measured before their step).
        `weight` scales the observation entering the moving average (importance weighting)."""
        s = self.slots(ids)
        loss = losses.detach().float().to(self.device)
        logp = torch.log_softmax(logits.detach().float(), dim=1).to(self.device)
        entropy = -(logp.exp() * logp).sum(1)
        conf, pred = logp.max(1)
        labels = labels.to(self.device).long()
        correct = (pred == labels).float()
        seen = self.visits[s] > 0
        change = torch.where(seen, (loss - self.last_loss[s]).abs(), torch.zeros_like(loss))
        flip = torch.where(seen, (correct - self.last_correct[s]).abs(), torch.zeros_like(loss))
        # Steps between the two visits moved the weights by sum(lr); the first step has no past.
        prev_lr = lr if self.prev_lr is None else self.prev_lr
        pace = (self.cum_lr - self.lr_mark[s]).float().clamp_min(1e-8)
        if self.signal == "loss":
            a, valid = (loss / max(prev_lr, 1e-8) if self.lr_normalised else loss), torch.ones_like(seen)
        else:
            raw = change if self.signal == "dloss" else flip
            a, valid = (raw / pace if self.lr_normalised else raw), seen
        if weight is not None:
            a = a * weight.to(self.device).float()
        self._update_dih(s[valid], a[valid])
        self.last_loss[s], self.last_entropy[s], self.last_correct[s] = loss, entropy, correct
        self.loss_change[s], self.flip[s] = change, flip
        self.label[s], self.last_pred[s], self.last_conf[s] = labels, pred, conf.exp()
        self.last_epoch[s] = epoch
        self.visits[s] += 1
        self.lr_mark[s] = self.cum_lr
        self.cum_lr += lr
        self.prev_lr = lr

    def _update_dih(self, s: torch.Tensor, a: torch.Tensor) -> None:
        """r <- gamma * a + (1 - gamma) * r; the first observation sets r."""
        known = self.dih_updates[s] > 0
        self.dih[s] = torch.where(known, self.gamma * a + (1 - self.gamma) * self.dih[s], a)
        self.dih_updates[s] += 1

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {name: getattr(self, name).detach().cpu().clone() for name in PER_SAMPLE}
        state["index"] = self.index.cpu().clone()
        state["cum_lr"] = torch.tensor(self.cum_lr, dtype=torch.float64)
        state["prev_lr"] = torch.tensor(math.nan if self.prev_lr is None else self.prev_lr, dtype=torch.float64)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Per-sample values matched by stable id; samples absent from `state` stay unseen."""
        for name in PER_SAMPLE:
            getattr(self, name).copy_(torch.zeros_like(getattr(self, name)))
        for name in ("last_epoch", "label", "last_pred"):
            getattr(self, name).fill_(-1)
        saved_ids = state["index"].to(self.device).long()
        order = torch.argsort(saved_ids)
        sorted_saved = saved_ids[order]
        where = torch.searchsorted(sorted_saved, self.index).clamp_max(max(len(saved_ids) - 1, 0))
        present = sorted_saved[where] == self.index if len(saved_ids) else torch.zeros_like(self.index, dtype=torch.bool)
        src = order[where][present]
        for name in PER_SAMPLE:
            if name in state:   # stores saved before a field existed leave it at its unseen value
                getattr(self, name)[present] = state[name].to(self.device)[src]
        self.cum_lr = float(state["cum_lr"])
        prev = float(state["prev_lr"])
        self.prev_lr = None if math.isnan(prev) else prev
