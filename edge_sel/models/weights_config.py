"""What a model's published weights are and expect, kept beside the model's definition (as timm
keeps a config beside each model): where they come from, the input they were trained on, and the
classifier that is made anew for other classes. models.pretrained reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class WeightsConfig:
    package: str                 # the pip package that holds the weights file
    module: str                  # its importable name
    locator: str                 # a class there whose get_model_file_path() gives the file
    file: str                    # the file's name
    licence: str
    native_size: int             # the image size the weights were trained at (px)
    mean: tuple[float, ...]      # input normalisation the weights expect, on RGB in [0, 1]
    std: tuple[float, ...]
    classifier: tuple[str, ...]  # the classifier's tensors, replaced for another number of classes
    imagenet_top1: float         # ImageNet top-1 (%) as the weights' authors report it
    rename: Callable[[str], str]     # a tensor's name in the file -> its name in edge-sel's model
    origin: str                  # what the weights are, in words

    def to_json(self) -> dict:
        return {"package": self.package, "file": self.file, "licence": self.licence,
                "native_size": self.native_size, "mean": list(self.mean), "std": list(self.std),
                "classifier": list(self.classifier), "imagenet_top1": self.imagenet_top1, "origin": self.origin}
