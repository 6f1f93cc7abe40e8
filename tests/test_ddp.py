"""Data-parallel pretraining under torchrun: real torchrun processes (gloo on loopback), and the
pure logic that combines the ranks' counters."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edge_sel.config import TrainConfig
from edge_sel.engine.runs.ddp import (ShardedPlans, combine_energy, fault_kill_step, is_restart_of, rank_meter_names,
                                 sum_counts)
from edge_sel.data import BatchLoader
from edge_sel.engine.machine.distributed import World, shard_positions
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import pretrain
from edge_sel.methods import Strategy
from helpers import run_cli

DATA = ["--dataset", "digits", "--subset", "600"]
TRAIN = ["--epochs", "2", "--batch-size", "32", "--memory-format", "contiguous", "--eval-batch-size", "256",
         "--quiet"]
HARD_LIMIT_S = 300   # a bound against hangs, not a timing target: a shared, loaded 2-core machine took 114 s


def torchrun(out, *extra_args, env_extra=None, max_restarts=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           # Without it, elastic restarts here recovered only some of the time.
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", str(max_restarts), "-m", "edge_sel", "pretrain", *DATA, *TRAIN, "--out", str(out),
           *extra_args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=HARD_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"torchrun did not finish within {HARD_LIMIT_S} s")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)     # nothing of the job outlives the test
        except ProcessLookupError:
            pass
    return proc.returncode, stdout, stderr


def read_records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


EXIT_THREADS = Path(__file__).parent / "exit_threads"     # its sitecustomize lists each rank's threads at exit


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    threads_dir = tmp_path_factory.mktemp("exit-threads")
    rc, stdout, stderr = torchrun(out, env_extra={
        "PYTHONPATH": os.pathsep.join(filter(None, [str(EXIT_THREADS), os.environ.get("PYTHONPATH")])),
        "EDGE_SEL_TEST_EXIT_THREADS": str(threads_dir)})
    assert rc == 0, stderr[-3000:]
    return out, stdout, threads_dir


def test_two_ranks_train_each_sample_once_and_rank_zero_alone_writes(ddp_run):
    out, stdout, _ = ddp_run
    recs = read_records(out)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["epoch"] for r in recs] == [0, 1]             # one writer: no record twice
    train_n = summary["dataset"]["train_samples"]
    for r in recs:
        assert r["forward_samples"] == r["backward_samples"] == r["samples_available"] == train_n
        assert (r["ranks"], r["energy_readers"]) == (2, 2)    # the estimate: each rank's own process time
        assert r["energy_j"] > 0 and r["energy_method"] == "estimated"
    assert summary["world_size"] == 2 and summary["distributed"]["backend"] == "gloo"
    assert summary["totals"]["samples_trained"] == 2 * train_n
    assert sorted(p.name for p in out.iterdir()) == [".edge-sel-output", "anchors.safetensors", "config.json", "fisher.safetensors",
                                                     "metrics.csv", "metrics.jsonl", "model.json", "model.safetensors",
                                                     "source.safetensors", "state", "summary.json"]
    # rank 0 wrote the source memory once, from the final weights, with the whole training split's anchors
    shipped = json.loads((out / "model.json").read_text())["source_memory"]
    assert shipped["anchors"]["samples"] == summary["source_memory"]["anchors"]["samples"] > 0
    assert (out / "source.safetensors").read_bytes() != b"" and \
        (out / "source.safetensors").stat().st_size == shipped["source"]["bytes"]
    assert sorted(p.name for p in (out / "state").iterdir()) == ["current.pt", "previous.pt"]
    # --quiet on both ranks: no epoch table, the output model and its all-in cost from rank 0 alone
    lines = stdout.splitlines()
    assert stdout.count("run directory:") == 2 and stdout.count("output model (") == 1
    assert all(ln.startswith(("output model (", "run directory:")) for ln in lines), lines


def test_flops_equal_a_single_process_run_of_the_same_samples(ddp_run, tmp_path, one_thread):
    out, *_ = ddp_run
    single = tmp_path / "single"
    cfg = TrainConfig(epochs=1, batch_size=32, memory_format="contiguous", eval_batch_size=256)
    pretrain("edgecnn", DataOptions("digits", subset=600), cfg, single, quiet=True)
    one = read_records(single)[0]
    for r in read_records(out):
        assert (r["flops_forward"], r["flops_backward"]) == (one["flops_forward"], one["flops_backward"])
        assert r["forward_samples"] == one["forward_samples"]


def test_ddp_checkpoint_loads_in_a_normal_finetune(ddp_run, tmp_path, one_thread):
    out, *_ = ddp_run
    ft = tmp_path / "ft"
    pre = json.loads((out / "summary.json").read_text())
    # Evaluated in the precision rank 0 evaluated in (a probe under load may choose another).
    run_cli("finetune", "--checkpoint", out, *DATA, "--epochs", "1", "--memory-format", "contiguous",
            "--eval-batch-size", "256", "--precision", pre["precision"]["eval"], "--quiet", "--out", ft)
    base = [r for r in read_records(ft) if r["phase"] == "baseline"][0]
    # The baseline is the loaded checkpoint evaluated as it is: rank 0's evaluation of the same weights.
    assert base["test_acc"] == pytest.approx(pre["final"]["test_acc"], abs=1e-6)
    assert [r["epoch"] for r in read_records(ft) if r["phase"] == "finetune"] == [0]


def test_a_plain_rerun_under_torchrun_still_refuses_an_existing_out(ddp_run):
    out, *_ = ddp_run
    rc, _, stderr = torchrun(out)
    assert rc != 0 and "already exists and is not empty" in stderr


def test_every_rank_has_joined_the_process_groups_threads_before_its_interpreter_exits(ddp_run):
    # Torn down during the interpreter's exit instead, gloo's threads could abort a rank (SIGABRT)
    # after the run was written, and torchrun then reported the finished job failed.
    *_, threads_dir = ddp_run
    for rank in (0, 1):
        names = (threads_dir / f"rank{rank}.txt").read_text().split()
        assert names and not [n for n in names if "gloo" in n or "tcpstore" in n], (rank, names)


# -- pure logic -------------------------------------------------------------------------------

def test_counts_sum_and_throttling_is_the_longest():
    got = sum_counts([{"n_trained": 270, "flops_f": 10, "throttled": 1.5}, {"n_trained": 270, "flops_f": 12,
                                                                            "throttled": 0.5}])
    assert got == {"n_trained": 540, "flops_f": 22, "throttled": 1.5}


def test_energy_is_summed_over_the_ranks_that_read_a_meter():
    w0 = {"energy_j": 10.0, "energy_source": "rapl", "energy_method": "counter", "energy_coverage": 1.0,
          "energy_by_component": {"cpu": 10.0}, "energy_window_s": 2.0, "avg_power_w": 5.0, "max_temp_c": 60.0,
          "throttle_reasons": [], "idle_power_w": 1.0, "peak_power_w": 7.0}
    w1 = {"energy_j": None, "energy_source": "none", "energy_method": "unavailable", "energy_coverage": 0.0,
          "energy_by_component": {}, "energy_window_s": 2.0, "max_temp_c": None, "throttle_reasons": []}
    host_only = combine_energy([w0, w1], 2)
    assert (host_only["energy_j"], host_only["energy_readers"], host_only["energy_source"]) == (10.0, 1, "rapl")
    assert host_only["peak_power_w"] == 7.0 and host_only["energy_net_j"] == pytest.approx(8.0)
    w1 = {**w0, "energy_j": 6.0, "energy_source": "estimate", "energy_by_component": {"cpu": 6.0},
          "energy_coverage": 0.5, "max_temp_c": 70.0}
    both = combine_energy([w0, w1], 2)
    assert both["energy_j"] == 16.0 and both["energy_by_component"] == {"cpu": 16.0}
    assert both["avg_power_w"] == 8.0 and both["energy_coverage"] == 0.5 and both["max_temp_c"] == 70.0
    assert both["peak_power_w"] is None and both["energy_source"] == "rapl+estimate"
    nothing = combine_energy([w1 | {"energy_j": None}] * 2, 2)
    assert nothing["energy_j"] is None and nothing["energy_readers"] == 0


def test_host_wide_meters_are_read_by_local_rank_zero_only():
    chosen = ["nvml", "rapl"]
    assert rank_meter_names(chosen, World(2, 4, 0)) == ["nvml", "rapl"]
    assert rank_meter_names(chosen, World(3, 4, 1)) == ["nvml"]           # its own GPU only
    assert rank_meter_names(["estimate"], World(1, 2, 1)) == ["estimate"]  # its own process time
    assert rank_meter_names(["jetson"], World(1, 2, 1)) == []


def test_only_a_restart_of_the_same_torchrun_job_resumes():
    config = {"torchrun": {"run_id": "abc", "world_size": 2}}
    assert is_restart_of(config, {"TORCHELASTIC_RUN_ID": "abc", "TORCHELASTIC_RESTART_COUNT": "1"})
    assert not is_restart_of(config, {"TORCHELASTIC_RUN_ID": "abc", "TORCHELASTIC_RESTART_COUNT": "0"})
    assert not is_restart_of(config, {"TORCHELASTIC_RUN_ID": "other", "TORCHELASTIC_RESTART_COUNT": "2"})
    assert not is_restart_of({}, {"TORCHELASTIC_RUN_ID": "abc", "TORCHELASTIC_RESTART_COUNT": "1"})


def test_fault_hook_kills_one_rank_in_the_first_attempt_only():
    env = {"EDGE_SEL_FAULT_KILL_AT_STEP": "11", "EDGE_SEL_FAULT_KILL_RANK": "1"}
    assert fault_kill_step(World(1, 2, 1), env) == 11
    assert fault_kill_step(World(0, 2, 0), env) is None
    assert fault_kill_step(World(1, 2, 1), {**env, "TORCHELASTIC_RESTART_COUNT": "1"}) is None
    assert fault_kill_step(World(0, 2, 0), {}) is None


class _Samples:
    """n training samples that are not a camera stream (what planning reads of a dataset)."""
    frames, stream_order = 1, "shuffle"

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


class _Ctx:
    def __init__(self, n, seed):
        self.train = _Samples(n)
        self.generator = torch.Generator().manual_seed(seed)


def test_every_rank_plans_alike_and_the_shards_cover_each_sample_once_per_epoch():
    ranks = []
    for r in range(3):
        sharded = ShardedPlans(Strategy(), World(r, 3, r), seed=5)
        sharded.setup(_Ctx(101, seed=5))
        ranks.append(sharded)
    orders = []
    for epoch in range(3):
        shards = []
        for sharded in ranks:
            plan = sharded.plan(epoch)
            shards.append(plan.positions)
            assert plan.info["shard_samples_untrained"] == 2
        joined = torch.cat(shards)
        # Equal shares: the shuffled plan's last 101 % 3 samples wait for another epoch.
        assert [len(s) for s in shards] == [33, 33, 33] and len(set(joined.tolist())) == 99
        orders.append(shards[0].tolist())
    assert orders[0] != orders[1]                          # reshuffled every epoch
    assert ranks[0].name == "dense"                        # everything else is the strategy's own


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_every_rank_cuts_the_same_batches_whatever_the_plan_size(world_size):
    """Uneven strided shares gave ranks different step counts (2 ranks, 131 samples, batches of 64:
    66 -> 64 + 2, 65 -> one merged 65), and the ranks' gradient all-reduces fell out of step."""
    loader = BatchLoader.__new__(BatchLoader)
    for batch_size in (16, 32, 64):
        loader.batch_size = batch_size
        for n in range(1, 300):
            shares = [shard_positions(torch.arange(n), World(r, world_size, r)) for r in range(world_size)]
            assert len({len(s) for s in shares}) == 1
            assert len({loader.num_batches(len(s)) for s in shares}) == 1
            assert len(torch.cat(shares).unique()) == n - n % world_size


def test_a_non_finite_loss_on_one_rank_rolls_every_rank_back_and_a_killed_rank_restarts_from_there(tmp_path):
    """One real 2-rank gloo job for three items: 131 training samples in batches of 32 (uneven
    strided shares would give the ranks 3 and 2 steps, and their all-reduces would fall out of
    step); rank 1 alone reports a NaN loss at step 2 (epoch 1's first); then rank 1 is SIGKILLed
    right after the retried step, before epoch 1's checkpoint, and torchrun restarts both ranks
    from the state the rollback wrote (so the halved rate survives the restart)."""
    out = tmp_path / "run"
    rc, _, stderr = torchrun(out, "--subset", "131", "--schedule", "constant", "--lr", "0.04", max_restarts=1,
                             env_extra={"EDGE_SEL_FAULT_NAN_AT_STEP": "2", "EDGE_SEL_FAULT_KILL_AT_STEP": "3",
                                        "EDGE_SEL_FAULT_KILL_RANK": "1"})
    assert rc == 0, stderr[-3000:]
    assert stderr.count("rolled back to the last checkpoint, learning rate x0.5") == 2, stderr[-3000:]
    assert "failed (exitcode: -9) local_rank: 1" in stderr, stderr[-3000:]     # the hook's SIGKILL
    recs = read_records(out)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["epoch"] for r in recs] == [0, 1]
    assert [r["torchrun_restart"] for r in recs] == [0, 1]     # epoch 0 from the first attempt
    assert summary["distributed"]["restart_count"] == 1 and summary["distributed"]["resumed_from_epoch"] == 1
    for r in recs:       # both ranks: 65 samples in two steps (32 + 33); one planned sample waits
        assert (r["optimizer_steps"], r["backward_samples"], r["shard_samples_untrained"]) == (2, 130, 1)
    # The restart resumed from the rollback's state: the event and the halved rate came with it.
    assert [r["nonfinite_events"] for r in recs] == [0, 1]
    assert [r["lr_end"] for r in recs] == pytest.approx([0.04, 0.02])
    # Both ranks' thrown-away step (32 samples each) is counted once, in rank 0's record.
    assert [r["rolled_back_samples"] for r in recs] == [0, 64]
    per_sample = (recs[0]["flops_forward"] + recs[0]["flops_backward"]) / 130
    assert recs[1]["rolled_back_flops"] == pytest.approx(64 * per_sample, rel=0.02)
    assert recs[1]["flops_train"] == recs[1]["flops_forward"] + recs[1]["flops_backward"] + recs[1]["rolled_back_flops"]
