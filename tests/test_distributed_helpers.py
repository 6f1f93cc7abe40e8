import subprocess
import sys

import torch

from edge_sel.engine.machine.distributed import World, detect_world, shard_positions, sum_across


def test_plain_process_is_rank_zero_of_one():
    w = detect_world({})
    assert (w.rank, w.size, w.local_rank, w.distributed, w.is_main) == (0, 1, 0, False, True)


def test_torchrun_environment_is_read():
    w = detect_world({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.local_rank, w.distributed, w.is_main, w.reads_host_energy) == (3, 4, 1, True, False, False)


def test_shards_are_equal_and_never_padded():
    plan = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    shards = [shard_positions(plan, World(r, 2, r)) for r in range(2)]
    # Equal shares (every rank must take the same steps); the one left over is not trained, never padded.
    assert [len(s) for s in shards] == [51, 51]
    trained = torch.cat(shards).tolist()
    assert len(set(trained)) == 102 and set(trained) <= set(range(103))


def test_sum_across_single_process_is_identity():
    assert sum_across([1.0, 2.5], World()) == [1.0, 2.5]


def test_finetune_under_torchrun_refuses_in_one_line(tmp_path):
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    import os
    proc = subprocess.run([sys.executable, "-m", "edge_sel", "finetune", "--checkpoint", str(tmp_path),
                           "--epochs", "1", "--out", str(tmp_path / "o")],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "single-device" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
