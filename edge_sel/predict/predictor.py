"""A deployed model that predicts as a device does: `Predictor` keeps the stream's state between calls.

    predictor = Predictor("checkpoints/deployed")            # or an export directory, backend="ort"
    out = predictor.predict(frame)                            # uint8 C x H x W or N x C x H x W
    out.classes, out.labels, out.conditions, out.logits
    predictor.predict(image_in_0_1, scale=255)                # floats are pixels only with a scale
    predictor.predict(["a.png", "b.png"])                     # files, PIL images and numpy arrays too

One image per call is a frame of a stream: its condition is chosen with the frames before it
(edge_sel/predict/conditions.py). Several images per call are a set: each takes its own condition
within the batch's mixture. A checkpoint without a bank predicts with its own statistics, and says
so (`conditions` is "own"). The stream's state is guarded by a lock: threads may share a predictor
(their frames then form one stream, in the order the lock admits them).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from edge_sel.core.bn_bank import read_bank
from edge_sel.errors import InputError, named_inside, read_json
from edge_sel.models import load_checkpoint
from edge_sel.predict.conditions import (DEFAULT_WINDOW, FEATURES_PER_CHANNEL, ConditionChooser, distance_flops,
                                         feature_flops, normalised, pixel_features)
from edge_sel.predict.images import as_pixels
from edge_sel.predict.statistics import StatisticsSwitch, floating_dtype, stats_on

OWN = "own"                        # the condition name reported when a model keeps no bank
BACKENDS = ("torch", "ort")


@dataclass
class Prediction:
    classes: list[int]
    labels: list[str]
    conditions: list[str]
    logits: torch.Tensor


class Predictor:
    def __init__(self, checkpoint, backend: str = "torch", window: int = DEFAULT_WINDOW, use_bank: bool = True,
                 device: str = "cpu", threads: int | None = None):
        if backend not in BACKENDS:
            raise InputError(f"--backend: choose one of {', '.join(BACKENDS)}, got {backend!r}")
        for option, value, least in (("--window", window, 2), ("--threads", threads, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise InputError(f"{option} must be > {least - 1}, got {value!r}")
        if backend == "ort" and str(device) != "cpu":
            raise InputError(f"--device {device}: --backend ort runs on the CPU (leave --device out)")
        device = torch_device(device) if backend == "torch" else None
        self.path = Path(checkpoint)
        if not self.path.is_dir():
            raise InputError(f"{self.path}: no such checkpoint directory")
        self.backend = backend
        self.chooser: ConditionChooser | None = None
        self.images_chosen = 0
        self._stream = threading.Lock()      # the chooser's belief and the count move together
        if backend == "torch":
            self._load_torch(use_bank, window, device)
        else:
            self._load_ort(use_bank, window, threads)
        self.num_conditions = len(self.chooser.names) if self.chooser else 0

    # -- loading ----------------------------------------------------------------------------------
    def _load_torch(self, use_bank: bool, window: int, device: str) -> None:
        self.model, card = load_checkpoint(self.path)
        self.device = device
        self.model.eval().to(self.device)
        self.card = card
        saved = read_bank(self.path, list(card.input_shape), self.model) if use_bank else None
        self.switch = None
        if saved:
            self.chooser = ConditionChooser.from_images([c.name for c in saved], [c.images for c in saved],
                                                        card.mean, card.std, window)
            self.stats = [stats_on(c.stats, self.device, floating_dtype(self.model)) for c in saved]
            self.switch = StatisticsSwitch(self.model)
        self.described = sum(len(c.images) for c in saved) if saved else 0

    def _load_ort(self, use_bank: bool, window: int, threads: int | None) -> None:
        from edge_sel.predict.ort_session import load_sessions
        self.card, self.export_flops = read_card_of_export(self.path)
        names, sessions, chooser = load_sessions(self.path, use_bank, threads)
        self.sessions = sessions
        self._input_names = [sess.get_inputs()[0].name for sess in sessions]   # asked once, not per frame
        if chooser is not None:
            self.chooser = chooser_of_export(self.path, chooser, window, self.card.input_shape[0])
        self.condition_names = names
        self.described = 0

    # -- predicting -------------------------------------------------------------------------------
    def reset(self) -> None:
        """A new stream: forget which condition the last frames were in."""
        if self.chooser is not None:
            with self._stream:
                self.chooser.reset()

    def choose(self, images: torch.Tensor) -> torch.Tensor:
        """Each image's condition (pixels 0-255): a frame of the stream, or a set when several."""
        features = pixel_features(images, self.card.mean, self.card.std)
        with self._stream:
            self.images_chosen += len(images)
            if len(images) == 1:
                return self.chooser.choose_stream(features)
            return self.chooser.choose_batch(features)

    @torch.inference_mode()
    def predict(self, images, scale: float | None = None) -> Prediction:
        """Images in arrival order: uint8 pixels (C x H x W or N x C x H x W, a tensor or a numpy
        array), PIL images or image files; floats with the `scale` that makes them pixels of 0-255
        (255 for images in 0-1), else refused (images/as_pixels)."""
        images = as_pixels(images, self.card.input_shape, scale)
        x = normalised(images, self.card.mean, self.card.std)
        choice = self.choose(images) if self.chooser is not None else torch.zeros(len(x), dtype=torch.long)
        if self.backend == "torch":
            x = x.to(self.device)
            if self.switch is None:
                logits = self.model(x)
            else:
                logits = self.switch.forward(self.model, x, choice, self.stats)
            logits = logits.float().cpu()
        else:
            logits = self._ort_logits(x, choice)
        classes = logits.argmax(1).tolist()
        names = self.chooser.names if self.chooser is not None else [OWN]
        return Prediction(classes, [self.card.class_names[c] for c in classes],
                          [names[k] for k in choice.tolist()], logits)

    def _ort_logits(self, x: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        arr = x.numpy()
        first = int(choice[0])
        if len(x) == 1 or bool((choice == first).all()):      # a frame, or a batch of one condition
            session = self.sessions[first]
            return torch.from_numpy(session.run(None, {self._input_names[first]: arr})[0]).float()
        out = torch.empty(len(x), self.card.num_classes)
        for k in torch.unique(choice).tolist():
            rows = (choice == k).nonzero().view(-1)
            session = self.sessions[k]
            got = session.run(None, {self._input_names[k]: arr[rows.numpy()]})[0]
            out[rows] = torch.from_numpy(got).float()
        return out

    # -- accounting -------------------------------------------------------------------------------
    def flops_per_image(self) -> dict:
        """Counted FLOPs of one image: the forward pass, and choosing its condition."""
        from edge_sel.core.flops import FlopCounter
        if self.backend == "torch":
            forward = FlopCounter(self.model, list(self.card.input_shape)).eval_batch(1)
        else:
            forward = self.export_flops       # counted at export: no checkpoint is looked for here
        choose = 0
        if self.chooser is not None:
            choose = feature_flops(self.card.input_shape) + distance_flops(
                self.num_conditions, FEATURES_PER_CHANNEL * self.card.input_shape[0])
        return {"forward": forward, "choice": choose}


def read_card_of_export(path: Path):
    """The model card an export carries in its manifest (class names, input shape, normalisation),
    and the forward FLOPs of one image it counted at export (None for an export made before they
    were recorded). Nothing the manifest names is opened: it describes the export, from inside it."""
    from edge_sel.core.checkpoint import ModelCard
    manifest = named_inside(path, "manifest.json", str(path))
    if not manifest.is_file():
        raise InputError(f"{path}: not an export directory (no manifest.json); run edge-sel export first")
    try:
        m = read_json(manifest)
        norm = m["input"]["normalization"]
        shape = [int(v) for v in m["input"]["shape"][1:]]
        card = ModelCard(m["checkpoint"]["architecture"], int(m["checkpoint"]["num_classes"]), list(m["class_names"]),
                         shape, [float(v) for v in norm["mean"]], [float(v) for v in norm["std"]], {}, {})
        flops = m["inference_model"].get("flops_forward_per_image")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError) as e:
        raise InputError(f"{manifest}: unreadable or corrupt ({e.__class__.__name__}: {e})") from None
    problem = card.problem()        # too few class names, a std of 0 (every feature NaN), ...
    if problem:
        raise InputError(f"{manifest}: unreadable or corrupt ({problem})")
    if flops is not None and (type(flops) is not int or flops < 0):
        raise InputError(f"{manifest}: inference_model.flops_forward_per_image is {flops!r}, not a count of FLOPs")
    return card, flops


def chooser_of_export(path: Path, d, window: int, channels: int) -> ConditionChooser:
    """The chooser an export's conditions.json describes, each Gaussian over the features of images of
    `channels` channels; one line naming the file otherwise."""
    where = path / "conditions.json"
    try:
        chooser = ConditionChooser.from_dict(d, window)
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        raise InputError(f"{where}: unreadable or corrupt ({e.__class__.__name__}: {e})") from None
    dims = FEATURES_PER_CHANNEL * channels
    if not all(isinstance(n, str) for n in chooser.names) or any(len(m.mean) != dims for m in chooser.models):
        raise InputError(f"{where}: unreadable or corrupt (one name and a Gaussian over {dims} features per "
                         f"condition expected)")
    return chooser


def torch_device(name) -> torch.device:
    """A device torch can put the model on here (cpu, cuda, cuda:N, mps), or one line naming --device."""
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError, ValueError) as e:     # no CUDA: AssertionError
        said = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise InputError(f"--device {name}: torch cannot use it on this machine ({said})") from None
    return device
