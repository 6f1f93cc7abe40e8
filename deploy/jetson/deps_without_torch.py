"""Print an installed distribution's requirements without torch (and its companions), one per
line with their environment markers, for `pip install -r -`.

The Jetson image installs edge-sel with `--no-deps` and then these: the torch that the L4T base
image ships (built for the Jetson's CUDA) must never be replaced by a wheel from PyPI.

    python3 deps_without_torch.py edge-sel > requirements.txt
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, requires

KEEP_FROM_BASE_IMAGE = {"torch", "torchvision", "torchaudio"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements_without_torch(distribution: str) -> list[str]:
    kept = []
    for requirement in requires(distribution) or []:
        if re.search(r"\bextra\s*==", requirement):
            continue   # optional extras are installed on purpose, not here
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
        if canonical(name) not in KEEP_FROM_BASE_IMAGE:
            kept.append(requirement)
    return kept


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: deps_without_torch.py DISTRIBUTION", file=sys.stderr)
        return 2
    try:
        print("\n".join(requirements_without_torch(argv[1])))
    except PackageNotFoundError:
        print(f"deps_without_torch.py: {argv[1]} is not installed", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
