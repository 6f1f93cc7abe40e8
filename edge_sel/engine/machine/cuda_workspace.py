"""cuBLAS's workspaces under a memory budget on a GPU.

torch keeps one cuBLAS workspace per handle and stream for the life of the process, sized once, at the
first, from CUBLAS_WORKSPACE_CONFIG (":SIZE_KIB:COUNT" pairs; unset, 32 MiB on compute capability 9.0).
A run's forward and its backward's thread each get one: Lite0 at 128 px grew 65.0 MiB before its first
step on an H200, all of it these workspaces (freed by torch._C._cuda_clearCublasWorkspaces), against
0.4 MiB with ":16:8", at the same step time (benchmarks/cuda_workspace.py). That growth sat in every
budget: a plan at 1/10 of full fine-tuning's peak (84.7 MiB) was refused, naming 111.0 MiB.

A budgeted run on a GPU therefore asks for eight workspaces of 16 KiB (a size torch's deterministic
mode accepts) unless the environment names a size. What the process grows by before its first step is
measured as before (first_use.grown_mb), so where the setting comes too late (a workspace made earlier
in the process) the plan still fits beside what is really held.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

import torch

VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
SMALL = ":16:8"


def small_for_budget(device, budget_mb: float | None, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Before a budgeted CUDA run's first pass: SMALL unless the environment names a size. Returns the
    plan's note (the setting in force and whose it is); None for a run without a budget or off CUDA,
    whose environment is left as it is."""
    if budget_mb is None or torch.device(device).type != "cuda":
        return None
    if VARIABLE in environ:
        return f"cuBLAS workspaces {VARIABLE}={environ[VARIABLE]}, the environment's"
    environ[VARIABLE] = SMALL
    return f"cuBLAS workspaces {VARIABLE}={SMALL}, set for the budget (unset, 32 MiB a workspace on some GPUs)"
