"""The input normalisation a pretrain gives its model, recorded in the card with where it came
from (`normalization.source`): the training split's own statistics (`dataset`, a model of the
user's own), the statistics the starting weights were trained with (`weights`, a pretrained
model's default), or the `--input-norm` option (`option`). Every later command reads the card's."""

from __future__ import annotations

import math

from edge_sel.errors import InputError
from edge_sel.models.weights_config import WeightsConfig

NAMED = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),     # torchvision's ImageNet statistics
         "unit": None}                                                     # RGB in [-1, 1]: 0.5 for every channel
CHOICES = ("dataset", *NAMED)


def parse_input_norm(text: str | None) -> str | tuple[tuple[float, ...], tuple[float, ...]] | None:
    """A name of CHOICES, or explicit `M1,M2,M3/S1,S2,S3` as (means, stds); one line otherwise."""
    if text is None or text in CHOICES:
        return text
    means, sep, stds = str(text).partition("/")
    try:
        pair = tuple(tuple(float(v) for v in part.split(",")) for part in (means, stds))
    except ValueError:
        pair = None
    if not sep or pair is None or len(pair[0]) != len(pair[1]) or not all(math.isfinite(v) for v in pair[0] + pair[1]) \
            or not all(v > 0 for v in pair[1]):
        raise InputError(f"--input-norm {text!r}: expected one of {', '.join(CHOICES)}, or "
                         f"MEAN1,MEAN2,MEAN3/STD1,STD2,STD3 "
                         f"(one finite mean and one positive std per channel)")
    if not all(0 <= v <= 1 for v in pair[0]):     # pixels are scaled to [0, 1] before normalising
        raise InputError(f"--input-norm {text!r}: a mean outside the pixel range [0, 1] (pixels are scaled to "
                         f"[0, 1] first; ImageNet's means are 0.485,0.456,0.406)")
    return pair


def _values(choice, channels: int, train) -> tuple[list[float], list[float]]:
    if choice == "dataset":
        return train.channel_stats()
    if choice == "unit":
        return [0.5] * channels, [0.5] * channels
    mean, std = NAMED[choice] if isinstance(choice, str) else choice
    if len(mean) != channels:
        raise InputError(f"--input-norm {choice if isinstance(choice, str) else format_norm(mean, std)}: "
                         f"{len(mean)} channel(s), the data has {channels}")
    return list(mean), list(std)


def format_norm(mean, std) -> str:
    return f"{','.join(f'{v:g}' for v in mean)}/{','.join(f'{v:g}' for v in std)}"


def choose_norm(option: str | None, weights: WeightsConfig | None, train) -> tuple[list, list, dict, str | None]:
    """(mean, std, the card's record of where they came from, a note to print or None)."""
    choice = parse_input_norm(option)
    channels = train.input_shape[0]
    if choice is None and weights is not None:
        mean, std = _values((weights.mean, weights.std), channels, train)
        return mean, std, {"source": "weights", "weights": weights.package}, None
    if choice is None or choice == "dataset":
        mean, std = train.channel_stats()
        record = {"source": "dataset"} if choice is None else {"source": "dataset", "option": "dataset"}
    else:
        mean, std = _values(choice, channels, train)
        record = {"source": "option", "option": choice if isinstance(choice, str) else format_norm(mean, std)}
    note = None
    if weights is not None:
        expected = ([float(v) for v in weights.mean], [float(v) for v in weights.std])
        if (list(mean), list(std)) != expected:
            record["weights_expect"] = {"mean": expected[0], "std": expected[1]}
            note = (f"--input-norm {option}: the starting weights were trained on inputs normalised with "
                    f"{format_norm(*expected)}; this run normalises with {format_norm(mean, std)} "
                    f"(recorded in the card)")
    return [float(v) for v in mean], [float(v) for v in std], record, note
