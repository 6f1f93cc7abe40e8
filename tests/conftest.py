import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR_JPEG = SHARED / "data" / "cifar10-jpeg"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Decoded image-folder caches go to a per-session temp dir, except the shared CIFAR cache,
    # which tests reuse through EDGE_SEL_CACHE when the caller has set it.
    if "EDGE_SEL_CACHE" not in os.environ:
        monkeypatch.setenv("EDGE_SEL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def needs_cifar():
    return pytest.mark.skipif(not (CIFAR_JPEG / "train").is_dir(), reason=f"{CIFAR_JPEG} not present")
