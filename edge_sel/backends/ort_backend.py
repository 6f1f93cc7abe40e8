"""The ONNX Runtime training backend: the same loop, with forward, backward and optimizer step run
by onnxruntime.training.api on artifacts made by `edge-sel export`.

What the artifacts fix at export time, the run must agree with (checked, with a one-line error):
the trainable set (the scheme; `--sparsity` updaters cannot change it), the optimizer (plain SGD,
or AdamW with a given weight decay), the BatchNorm mode, and the architecture and classes.

The torch model stays the engine's view of the run. Its requires_grad flags mirror the scheme, so
the engine's counted FLOPs are those of the equivalent torch graph with the same trainable set
(ORT's graph differs in fusions, not in which gradients it computes). After every step the
trained tensors are copied back into it, so scoring passes, `params_updated_frac` and the run's
model.safetensors all see the fine-tuned weights.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn

from edge_sel.backends.ort_env import require_ort
from edge_sel.backends.ort_manifest import check_against_model, resolve
from edge_sel.backends.ort_schemes import set_trainable
from edge_sel.data import Batch
from edge_sel.errors import InputError

ORT_CHECKPOINT = "ort_checkpoint"
INFERENCE_MODEL = "model.onnx"


def session_options():
    """As many intra-op threads as torch uses, so the two backends compare on equal terms. ORT's
    worker threads keep spinning for a moment after each run (its default): turning that off to
    leave the cores to the torch ops between steps measured slower on a 2-core CPU, both for the
    bare step (benchmarks/bench_ort.py) and for a whole epoch. Where waiting is passive (other work shares
    the CPU: edge_sel/threads.py), ORT's threads do not spin either."""
    import onnxruntime as ort

    from edge_sel.threads import ort_waits_like_openmp
    options = ort_waits_like_openmp(ort.SessionOptions())
    options.intra_op_num_threads = torch.get_num_threads()
    return options


def check_run_matches(cfg, manifest: dict, where: Path) -> str:
    """The run's options against what the artifacts carry; returns the BatchNorm mode."""
    opt = manifest["training"]["optimizer"]
    bn_mode = manifest["training"]["bn_mode"]
    if cfg.sparsity not in (None, "none"):
        raise InputError(f"--sparsity {cfg.sparsity}: not supported with --backend ort; the trainable set "
                         f"is the artifact scheme (edge-sel export --scheme last-block|classifier|bias)")
    if cfg.optimizer != opt["name"]:
        other = (f"re-export with --optimizer {cfg.optimizer}" if cfg.optimizer in ("sgd", "adamw")
                 else "ORT artifacts carry sgd or adamw only")
        raise InputError(f"--optimizer {cfg.optimizer}: the artifacts in {where} carry {opt['name']}; pass "
                         f"--optimizer {opt['name']} ({other})")
    if opt["name"] == "sgd" and cfg.momentum != 0:
        raise InputError(f"--momentum {cfg.momentum}: ORT's SGD has no momentum; pass --momentum 0 "
                         f"(or export --optimizer adamw)")
    if not math.isclose(cfg.weight_decay, opt["weight_decay"], rel_tol=1e-6, abs_tol=1e-12):
        raise InputError(f"--weight-decay {cfg.weight_decay}: the {opt['name']} artifacts in {where} carry "
                         f"weight decay {opt['weight_decay']}; pass --weight-decay {opt['weight_decay']}")
    if cfg.label_smoothing:
        raise InputError("--label-smoothing: the artifacts' loss has no label smoothing; pass 0 with --backend ort")
    if cfg.bn_mode not in (None, bn_mode):
        raise InputError(f"--bn-mode {cfg.bn_mode}: the artifacts in {where} were exported with BatchNorm in "
                         f"{bn_mode} mode; re-export with --bn-mode {cfg.bn_mode}")
    return bn_mode


class OrtBackend:
    name = "ort"

    def __init__(self, model: nn.Module, directory: Path, manifest: dict, scheme: str,
                 torch_optimizer: torch.optim.Optimizer | None = None, device=torch.device("cpu")):
        self.model, self.manifest, self.scheme = model, manifest, scheme
        self.directory = Path(directory)
        self.device = device
        self.torch_optimizer = torch_optimizer   # kept only so records report the lr in use
        self.bn_mode = manifest["training"]["bn_mode"]
        self.input_shape = list(manifest["input"]["shape"][1:])
        info = manifest["schemes"][scheme]
        self.trainable = list(info["trainable"])
        self._open(str(self.directory / "checkpoint"))
        # Copied back after each step: what the step changes (BN running stats only in train mode).
        moving = set(self.trainable)
        if self.bn_mode == "train":
            moving |= {n for n in self._state_names() if n.endswith(("running_mean", "running_var"))}
        self._moving = [n for n in self._state_names() if n in moving]
        self._tensors = model.state_dict()   # views on the live parameters and buffers
        set_trainable(model, self.trainable)

    @classmethod
    def from_config(cls, cfg, model, optimizer, updater, device) -> "OrtBackend":
        require_ort("--backend ort")
        if not cfg.artifacts:
            raise InputError("--artifacts: required with --backend ort (make them with edge-sel export)")
        if torch.device(device).type != "cpu":
            raise InputError(f"--device {device}: the ort backend runs on the CPU (onnxruntime-training-cpu); "
                             f"pass --device cpu")
        directory, scheme, manifest, note = resolve(Path(cfg.artifacts))
        check_run_matches(cfg, manifest, Path(cfg.artifacts))
        same_weights = check_against_model(manifest, model, Path(cfg.artifacts))
        if note:
            click.echo(f"edge-sel: note: {note}", err=True)
        if not same_weights:
            click.echo(f"edge-sel: note: --artifacts {cfg.artifacts} were exported from other weights of the "
                       f"same architecture; training the --checkpoint's weights", err=True)
        return cls(model, directory, manifest, scheme, optimizer, device)

    def _open(self, checkpoint: str) -> None:
        """Session, module and optimizer over an ORT checkpoint (the export's, or one saved with
        optimizer state by a full-state checkpoint of the run)."""
        from onnxruntime.training import api

        self.state = api.CheckpointState.load_checkpoint(checkpoint)
        self.module = api.Module(str(self.directory / "training_model.onnx"), self.state,
                                 str(self.directory / "eval_model.onnx"), device="cpu",
                                 session_options=session_options())
        self._load_torch_weights()   # after the Module exists: writing a bare state crashes 1.19.2
        self.optimizer = api.Optimizer(str(self.directory / "optimizer_model.onnx"), self.module)

    @property
    def stateful(self) -> bool:
        """AdamW keeps moments between steps; ORT's SGD keeps nothing."""
        return self.manifest["training"]["optimizer"]["name"] != "sgd"

    # -- weights between torch and the checkpoint state ---------------------------------------
    def _state_names(self) -> list[str]:
        return [name for name, _ in self.state.parameters]

    def _load_torch_weights(self) -> None:
        """The checkpoint's weights go into the ORT state, whatever weights the export carried."""
        tensors = self.model.state_dict()
        for name in self._state_names():
            self.state.parameters[name] = tensors[name].detach().cpu().float().contiguous().numpy()

    @torch.no_grad()
    def _pull_weights(self) -> None:
        # Parameter.data is a numpy view of ORT's live buffer; copy it into the torch tensor.
        for name in self._moving:
            self._tensors[name].copy_(torch.from_numpy(self.state.parameters[name].data))

    # -- full-state checkpoints (resume, NaN rollback) ----------------------------------------
    def state_dict(self) -> dict:
        """The weights live in the torch model's state; a stateful optimizer's moments travel as
        the bytes of an ORT checkpoint saved with its optimizer state."""
        state = {"scheme": self.scheme}
        if self.stateful:
            from onnxruntime.training import api
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "ort_checkpoint"
                api.CheckpointState.save_checkpoint(self.state, str(path), include_optimizer_state=True)
                state["ort_checkpoint"] = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return state

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("ort_checkpoint")
        if saved is not None:          # resume or rollback: the optimizer's moments come back too
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "ort_checkpoint"
                path.write_bytes(saved.numpy().tobytes())
                self._open(str(path))
        # The trainer restored the torch model first; push those weights into the ORT session.
        self._load_torch_weights()

    # -- the backend interface ----------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if list(x.shape[1:]) != self.input_shape:
            raise InputError(f"--artifacts {self.directory}: exported for inputs {self.input_shape}, the data "
                             f"has {list(x.shape[1:])}")

    def set_lr(self, lr: float) -> None:
        self.optimizer.set_learning_rate(float(lr))
        if self.torch_optimizer is not None:
            for group in self.torch_optimizer.param_groups:
                group["lr"] = lr

    def train_step(self, step: int, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One ORT step on the batch (any batch size); returns per-sample losses and logits,
        both computed from the logits of this very step."""
        self._check_input(batch.x)
        x = batch.x.detach().to("cpu", torch.float32).contiguous().numpy()
        y = batch.y.detach().cpu().numpy().astype(np.int64)
        w = (np.ones(len(y), np.float32) if batch.weight is None
             else batch.weight.detach().to("cpu", torch.float32).numpy())
        self.module.train()
        _, logits = self.module(x, y, w)
        self.optimizer.step()
        self.module.lazy_reset_grad()
        self._pull_weights()
        logits_t = torch.from_numpy(logits).to(batch.x.device)
        losses = nn.functional.cross_entropy(logits_t, batch.y, reduction="none")
        return losses, logits_t

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the eval model (its loss inputs get placeholders and are ignored)."""
        self._check_input(x)
        n = x.shape[0]
        self.module.eval()
        _, logits = self.module(x.detach().to("cpu", torch.float32).contiguous().numpy(),
                                np.zeros(n, np.int64), np.ones(n, np.float32))
        return torch.from_numpy(logits).to(x.device)

    def finish_run(self, out: Path) -> None:
        """The run directory gets the ORT checkpoint (with optimizer state, for resuming) and the
        fine-tuned inference model, next to the torch checkpoint the engine writes."""
        from onnxruntime.training import api

        out = Path(out)
        api.CheckpointState.save_checkpoint(self.state, str(out / ORT_CHECKPOINT), include_optimizer_state=True)
        self.module.export_model_for_inferencing(str(out / INFERENCE_MODEL), ["logits"])
