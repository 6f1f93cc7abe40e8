"""Fleet fine-tuning with Flower: the sum aggregation, client splits, the server's records and
resume, node config errors, and a real fleet (a SuperLink and two SuperNodes on 127.0.0.1)."""

import json
import math
import subprocess
import sys
import time

import psutil
import pytest
import torch

from edge_sel.core.checkpoint import ModelCard, read_weights, save_checkpoint
from edge_sel.errors import InputError
from edge_sel.fleet.aggregate import combine
from edge_sel.fleet.node import parse_node_config
from edge_sel.fleet.partition import partition
from edge_sel.fleet.rundir import FleetRun, round_dir
from edge_sel.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def client(name, energy, flops_f, samples, acc, examples):
    return {"client": name, "info": {"energy_source": "estimate", "energy_method": "estimated"},
            "metrics": {"num-examples": examples, "samples_trained": samples, "forward_samples": samples,
                        "flops_forward": flops_f, "flops_backward": 2 * flops_f, "flops_eval": 7,
                        "energy_j": energy, "eval_energy_j": 1.0, "wall_s": energy / 10,
                        "local_val_acc": acc, "local_train_acc": acc}}


def test_energy_flops_and_samples_are_summed_accuracy_weighted():
    reports = [client("a", 12.5, 10**12, 300, 0.5, 100)["metrics"], client("b", 30.0, 3 * 10**12, 100, 0.9, 300)["metrics"]]
    total = combine(reports)
    assert total["energy_j"] == 42.5
    assert total["flops_forward"] == 4 * 10**12 and total["flops_backward"] == 8 * 10**12
    assert total["samples_trained"] == 400 and total["num-examples"] == 400
    assert total["local_val_acc"] == pytest.approx((0.5 * 100 + 0.9 * 300) / 400)
    assert total["wall_s"] == 3.0                    # the slowest client
    # an unknown reading is not silently dropped from a sum
    assert math.isnan(combine([reports[0], {**reports[1], "energy_j": float("nan")}])["energy_j"])


def test_flower_aggregation_function_sums_what_flower_would_average():
    pytest.importorskip("flwr")
    from flwr.app import MetricRecord, RecordDict
    from edge_sel.fleet.aggregate import flower_sum_aggregation
    replies = [RecordDict({"metrics": MetricRecord(client("a", 2.0, 5, 10, 0.5, 10)["metrics"])}),
               RecordDict({"metrics": MetricRecord(client("b", 6.0, 7, 30, 1.0, 30)["metrics"])})]
    out = flower_sum_aggregation(replies, "num-examples")
    assert out["energy_j"] == 8.0 and out["flops_forward"] == 12 and out["samples_trained"] == 40
    assert out["local_val_acc"] == pytest.approx(0.875)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_split_is_deterministic_and_puts_every_sample_in_exactly_one_client(scheme):
    labels = torch.randint(0, 10, (3001,), generator=torch.Generator().manual_seed(0))
    parts = partition(labels, 4, scheme, alpha=0.3, seed=5)
    again = partition(labels, 4, scheme, alpha=0.3, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(len(labels)))
    other = partition(labels, 4, scheme, alpha=0.3, seed=6)
    assert any(not torch.equal(a, b) for a, b in zip(parts, other))
    shares = torch.stack([torch.bincount(labels[p], minlength=10).float() / len(p) for p in parts])
    spread = (shares.max(0).values - shares.min(0).values).max().item()
    if scheme == "iid":
        assert max(map(len, parts)) - min(map(len, parts)) <= 1 and spread < 0.01
    else:
        assert spread > 0.3                          # alpha 0.3: clients see very different classes


def tiny_checkpoint(path):
    torch.manual_seed(0)
    model = build_model("edgecnn", 10, 1)
    card = ModelCard("edgecnn", 10, [str(i) for i in range(10)], [1, 8, 8], [0.3], [0.4])
    save_checkpoint(path, model, card)
    return model, card


def test_resume_starts_from_the_last_recorded_round(tmp_path):
    warm = tmp_path / "warm"
    model, card = tiny_checkpoint(warm)
    out = tmp_path / "run"
    run = FleetRun(out, {"rounds": 4})
    for r in (0, 1, 2):
        with torch.no_grad():
            next(model.parameters()).fill_(float(r))
        run.write_round(r, model, card, {"test_acc": 0.1 * r}, [client("0", 1.0 + r, 5, 10, 0.5, 10)] if r else [], {})
    # a crash after round 3's checkpoint, before its record, with a half-written line
    with torch.no_grad():
        next(model.parameters()).fill_(3.0)
    save_checkpoint(round_dir(out, 3), model, card)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"round": 3, "energy')
    resumed = FleetRun(out, {"rounds": 4}, resume=True)
    assert resumed.last_round == 2
    assert [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    start, _ = resumed.start_model(warm)
    assert next(start.parameters()).flatten()[0].item() == 2.0
    summary = resumed.write_summary()
    assert summary["totals"]["energy_j"] == 2.0 + 3.0 and summary["energy_by_client_j"] == {"0": 5.0}
    with pytest.raises(InputError, match="not empty"):
        FleetRun(out, {})                            # a new run never replaces one silently


@pytest.mark.parametrize("config, message", [
    ({"partition-id": 0, "num-partitions": 2}, "missing dataset"),
    ({"dataset": "digits", "partition-id": 2, "num-partitions": 2}, "partition-id"),
    ({"dataset": "digits", "partition_id": 0}, "partition-id and num-partitions go together"),
    ({"dataset": "digits", "colour": "red"}, "colour: unknown key"),
    ({"dataset": "digits", "alpha": "lots"}, "alpha: expected float"),
    ({"dataset": "digits", "partition": "by-hand"}, "partition: must be one of"),
])
def test_bad_node_config_is_a_clear_error(config, message):
    with pytest.raises(InputError, match=message):
        parse_node_config(config)


def test_command_line_errors_are_one_line_exit_2(tmp_path):
    pytest.importorskip("flwr")         # without Flower the command says that first (the fleet extra)
    cmd = [sys.executable, "-m", "edge_sel", "fleet", "simulate", "--dataset", "digits", "--out", str(tmp_path / "r")]
    p = subprocess.run(cmd + ["--checkpoint", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "nope" in p.stderr and "Traceback" not in p.stderr


def test_missing_flower_names_the_extra(monkeypatch):
    from edge_sel.fleet import require_flwr
    monkeypatch.setitem(sys.modules, "flwr", None)
    with pytest.raises(InputError, match=r"pip install edge-sel\[fleet\]"):
        require_flwr()


def test_a_real_fleet_of_two_supernodes_improves_the_warmup_and_sums_their_joules(tmp_path):
    pytest.importorskip("flwr")
    from edge_sel.config import TrainConfig
    from edge_sel.engine.runs.data_options import DataOptions
    from edge_sel.engine.runs.run import pretrain
    from edge_sel.fleet.launch import LoopbackFleet
    from edge_sel.fleet.settings import ServerSettings
    warm = tmp_path / "warm"
    pretrain("edgecnn", DataOptions("digits", shard="0/2"),
             TrainConfig(epochs=1, batch_size=64, lr=0.02, memory_format="contiguous", eval_batch_size=256),
             warm, quiet=True)
    configs = [{"dataset": "digits", "shard": "1/2", "partition-id": i, "num-partitions": 2,
                "work-dir": str(tmp_path / f"client-{i}")} for i in range(2)]
    settings = ServerSettings(out=str(tmp_path / "run"), checkpoint=str(warm), rounds=2, eval_dataset="digits",
                              batch_size=32, lr=0.01, memory_format="contiguous", eval_batch_size=256).validate()
    fleet = LoopbackFleet(tmp_path / "fleet", configs)
    with fleet:
        fleet.run(settings, timeout=300)
        # two more runs on the same SuperLink, whose ServerApps must be gone at the end too
        a_round_below_min_clients_ends_the_run(fleet, tmp_path, warm)
        fleet_run_timeout_stops_the_server_app(fleet, tmp_path, warm)
    seen = dict(fleet.seen)
    assert len(seen) >= 5                            # superlink, 2 supernodes, their superexecs, flwr run...
    assert fleet.alive() == []                       # every process group is gone
    assert not [p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    assert records[-1]["test_acc"] > records[0]["test_acc"]
    for r in records[1:]:
        assert len(r["clients"]) == 2
        for key in ("energy_j", "flops_forward", "flops_backward", "flops_train", "backward_samples"):
            field = "samples_trained" if key == "backward_samples" else key
            assert r[key] == pytest.approx(sum(c[field] for c in r["clients"]), rel=1e-12)
        assert r["flops_train"] >= r["flops_forward"] + r["flops_backward"] > 0
        assert r["backward_samples"] == r["samples_available"] > 0
        assert r["energy_j"] > 0 and r["energy_method"] == "estimated"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["totals"]["energy_j"] == pytest.approx(sum(r["energy_j"] for r in records[1:]))
    assert read_weights(tmp_path / "run").keys() == read_weights(warm).keys()


def a_round_below_min_clients_ends_the_run(fleet, tmp_path, warm):
    """Every client fails (a strategy the clients do not know, past the command line's check): the
    run ends at round 1 with the client's error in one line, exit 1; before, it printed rounds with
    'clients 0' and exited 0."""
    from edge_sel.fleet.cli import finish
    from edge_sel.fleet.settings import ServerSettings
    bad = ServerSettings(out=str(tmp_path / "bad"), checkpoint=str(warm), rounds=2, eval_dataset="digits",
                         eval_subset=100, strategy="bogus", min_clients=2).validate()
    code = fleet.run(bad, timeout=300)
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert "round 1: 0 client(s) trained, fewer than --min-clients 2" in summary["stop_reason"]
    assert "unknown strategy 'bogus'" in summary["stop_reason"] and summary["last_round"] == 0
    assert [json.loads(line)["round"] for line in (tmp_path / "bad" / "metrics.jsonl").read_text().splitlines()] == [0]
    with pytest.raises(SystemExit) as stop:
        finish(bad, code, None)
    assert stop.value.code == 1


def fleet_run_timeout_stops_the_server_app(fleet, tmp_path, warm):
    """`fleet run --timeout`: the ServerApp is stopped on the SuperLink, not only the log stream
    (here the run waits for a third SuperNode that never comes)."""
    from click.testing import CliRunner
    from edge_sel.cli import cli
    from edge_sel.fleet import remote
    result = CliRunner().invoke(cli, ["fleet", "run", "--superlink", f"127.0.0.1:{fleet.port}", "--insecure",
                                      "--checkpoint", str(warm), "--eval-dataset", "digits", "--eval-subset", "100",
                                      "--out", str(tmp_path / "slow"), "--rounds", "3", "--min-clients", "3",
                                      "--timeout", "12"])
    assert result.exit_code == 1 and "did not finish within 12 s" in result.stderr, result.output
    assert result.stderr.count("\n") == 1
    # before, only `flwr run`'s log stream was stopped and the ServerApp went on waiting
    run = remote.describe(int(result.output.split()[2]), fleet.env)
    assert run["status"] == "finished:stopped", run
    deadline = time.monotonic() + 30
    while fleet._server_app_running() and time.monotonic() < deadline:
        fleet._watch()
        time.sleep(0.5)
    assert not fleet._server_app_running()
