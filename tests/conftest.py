import os
from pathlib import Path

import pytest


def _property_tests_derandomized():
    """Every property test draws the same examples at every run (from a hash of the test, not a seed)
    and replays none kept from an earlier run: the suite's verdict is no coin (a fresh clone's `make
    test` failed once on `--target-activation nan`, drawn about one run in eight). A case a test finds
    is kept in it as an @example. Settings a test gives itself inherit this profile."""
    try:
        from hypothesis import settings
    except ImportError:     # the GPU machine's CUDA tests run without it (benchmarks/gpu_common.sh)
        return
    settings.register_profile("edge-sel", derandomize=True, database=None)
    settings.load_profile("edge-sel")


_property_tests_derandomized()

SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR_JPEG = SHARED / "data" / "cifar10-jpeg"


# One intra-op thread for every training a test runs, whatever the caller's environment, unless the
# test says otherwise (the thread-choice tests set their own): the automatic choice
# (edge_sel/threads.py) follows OMP_NUM_THREADS or the machine's load, a CPU's float sums depend on
# how work is split between threads, and an assertion about a training outcome must not become a
# coin that the load tosses. EDGE_SEL_THREADS pins every command (--threads); OMP_NUM_THREADS, read
# when torch loads, pins in-process trainings (the Python API chooses nothing) and the subprocesses.
os.environ["EDGE_SEL_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
# And no other work stated for the same reason: a probe's result kept as final, never provisional
# because a neighbouring test was busy, and no quarter-second load sample in every command.
os.environ.setdefault("EDGE_SEL_OTHER_LOAD", "0")
# The command line's pretrain ships recipes for a device's own choice by default (27 short trainings:
# seconds on digits); the tests' pretrains ship none unless a test gives --set-gains-steps.
os.environ["EDGE_SEL_SET_GAINS_STEPS"] = "0"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """OMP_NUM_THREADS above comes too late where torch was imported before this file (a plugin)."""
    import torch
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # Decoded image-folder caches and measured layouts go to a per-session temp dir, except the
    # shared CIFAR cache, which tests reuse through EDGE_SEL_CACHE when the caller has set it.
    # Session scope: module fixtures and the subprocesses they start must all see one cache (a
    # layout measured twice can come out differently, and with it a seeded run's rounding).
    if "EDGE_SEL_CACHE" in os.environ:
        yield
        return
    os.environ["EDGE_SEL_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    yield
    del os.environ["EDGE_SEL_CACHE"]


@pytest.fixture(autouse=True, scope="session")
def _isolated_trust_file(tmp_path_factory):
    # The model files a pretrain trusts are recorded in a per-session list, never the user's own
    # (models/trusted_files.py); subprocesses the tests start read the same one.
    os.environ["EDGE_SEL_TRUST_FILE"] = str(tmp_path_factory.getbasetemp() / "trusted-model-files.json")
    yield
    del os.environ["EDGE_SEL_TRUST_FILE"]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    tiny models on a small shared CPU run faster than with spinning thread pools. Module scope, so
    that the module's own warmup fixtures run on one thread too."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def needs_cifar():
    return pytest.mark.skipif(not (CIFAR_JPEG / "train").is_dir(), reason=f"{CIFAR_JPEG} not present")


@pytest.fixture(scope="session")
def tiny_warm(tmp_path_factory):
    """An edgecnn warmup checkpoint on synthetic data, made once per test session."""
    from edge_sel.config import TrainConfig
    from edge_sel.engine.runs.data_options import DataOptions
    from edge_sel.engine.runs.run import pretrain
    from helpers import PINNED_CHOICES
    out = tmp_path_factory.mktemp("tiny-warm") / "ckpt"
    pretrain("edgecnn", DataOptions("synthetic"), TrainConfig(epochs=1, batch_size=64, **PINNED_CHOICES), out, quiet=True)
    return out


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory):
    """Weights a pretrain starts from, as a pretrained backbone's file would be: a digits edgecnn's
    (test_head_first, test_recipe)."""
    import torch

    from edge_sel.models import build_model
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("start") / "weights.pt"
    torch.save(build_model("edgecnn", 10, 1).state_dict(), path)
    return path
