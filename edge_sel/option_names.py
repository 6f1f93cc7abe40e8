"""Which option a mistyped name most likely meant, for the command line's and the Python API's
suggestions: the names other tools use for the same thing first, then an option the name starts
with (--lr-rate is --lr), then the closest spelling."""

from __future__ import annotations

import difflib

# Other tools' names (and common slips) -> this program's, in the API's spelling (underscores).
SYNONYMS = {
    "learning_rate": "lr", "lr_rate": "lr", "rate": "lr", "learningrate": "lr",
    "batchsize": "batch_size", "bs": "batch_size", "minibatch_size": "batch_size",
    "num_epochs": "epochs", "n_epochs": "epochs", "epoch": "epochs", "max_epochs": "epochs",
    "output": "out", "output_dir": "out", "out_dir": "out", "outdir": "out",
    "wd": "weight_decay", "l2": "weight_decay",
    "data": "dataset", "random_seed": "seed", "ckpt": "checkpoint",
}


def closest(name: str, names: list[str]) -> list[str]:
    """Up to three of `names` that `name` probably meant. Names may be option flags (--lr) or
    Python names (lr); `name` is compared in the same form."""
    flag = name.startswith("-")
    bare = name.lstrip("-").replace("-", "_").lower()

    def spelled(python_name: str) -> str:
        return "--" + python_name.replace("_", "-") if flag else python_name
    meant = SYNONYMS.get(bare)
    if meant is not None and spelled(meant) in names:
        return [spelled(meant)]
    starts = [n for n in names if len(n.lstrip("-")) > 1 and bare.startswith(n.lstrip("-").replace("-", "_") + "_")]
    if starts:
        return [max(starts, key=len)]
    return difflib.get_close_matches(name, names, n=3)
