"""Fleet under faults: options checked before anything is launched, a round below --min-clients,
SIGTERM and --timeout stopping every Flower process, --out and --checkpoint, the clients' full
training FLOPs, FedProx under a GradScaler, the clients' round directories, --resume against the
saved run, unknown energy, and --keep best's reported accuracy."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from click.testing import CliRunner

from edge_sel.core.checkpoint import ModelCard, save_checkpoint
from edge_sel.errors import InputError
from edge_sel.fleet.local import proximal_pull, round_metrics
from edge_sel.fleet.node import parse_node_config
from edge_sel.fleet.rundir import FleetRun
from edge_sel.fleet.settings import ServerSettings
from edge_sel.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
DIGITS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """An untrained digits model: enough for everything that is not about accuracy."""
    path = tmp_path_factory.mktemp("fleet") / "warm"
    torch.manual_seed(0)
    save_checkpoint(path, build_model("edgecnn", 10, 1), ModelCard("edgecnn", 10, DIGITS, [1, 8, 8], [0.3], [0.4]))
    return path


class Launched(Exception):
    pass


@pytest.fixture
def no_launch(monkeypatch):
    """Starting the fleet raises Launched: what a check must refuse never gets that far. The node
    configs it would have started are kept."""
    pytest.importorskip("flwr")
    from edge_sel.fleet import launch
    started = []

    def refuse(self):
        started.append(self.node_configs)
        raise Launched
    monkeypatch.setattr(launch.LoopbackFleet, "__enter__", refuse)
    return started


def simulate(*args):
    from edge_sel.cli import cli
    return CliRunner().invoke(cli, ["fleet", "simulate", "--dataset", "digits", *map(str, args)])


def one_line_exit_2(result, *words):
    err = result.stderr if hasattr(result, "stderr") else result.output
    assert result.exit_code == 2, result.output
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("args, words", [
    (["--strategy", "bogus"], ["--strategy", "bogus"]),
    (["--sparsity", "bogus"], ["--sparsity", "bogus"]),
    (["--strategy", "sundew", "--method-option", "no_such_option=1"], ["no_such_option"]),
    (["--strategy", "sundew", "--method-option", "min_activation=lots"], ["min_activation=lots"]),
    (["--gate", "bogus"], ["--gate"]),
    (["--partition", "dirichlet", "--alpha", "0.01", "--clients", "8"], ["--clients 8", "empty"]),
    (["--clients", "2", "--min-clients", "3"], ["--min-clients 3"]),
    (["--eval-dataset", "folder:/no/such/folder"], ["--eval-dataset", "/no/such/folder"]),
    (["--fleet-strategy", "fedavg", "--proximal-mu", "0.5"], ["--proximal-mu", "fedprox"]),
])
def test_every_client_option_is_checked_before_anything_is_launched(tmp_path, warm, no_launch, args, words):
    result = simulate("--checkpoint", warm, "--out", tmp_path / "run", *args)
    one_line_exit_2(result, *words)
    assert no_launch == [] and not (tmp_path / "run").exists()


def test_keep_logs_that_is_a_file_or_holds_another_run_is_refused_and_a_relative_one_is_kept(tmp_path, warm, no_launch,
                                                                                          monkeypatch):
    (tmp_path / "file").write_text("x")
    one_line_exit_2(simulate("--checkpoint", warm, "--out", tmp_path / "a", "--keep-logs", tmp_path / "file"),
                    "--keep-logs", "not a directory")
    (tmp_path / "old" / "client-0").mkdir(parents=True)
    one_line_exit_2(simulate("--checkpoint", warm, "--out", tmp_path / "a", "--keep-logs", tmp_path / "old"),
                    "--keep-logs", "not empty")
    assert no_launch == []
    # A relative folder is the one under the current directory: flwr, run inside it, looked for its
    # app in logs/logs/app and every round failed.
    from edge_sel.fleet.launch import LoopbackFleet
    monkeypatch.chdir(tmp_path)
    fleets = []

    def keep(self):
        fleets.append(self)
        raise Launched
    monkeypatch.setattr(LoopbackFleet, "__enter__", keep)
    simulate("--checkpoint", warm, "--out", tmp_path / "a", "--keep-logs", "logs")
    (fleet,) = fleets
    assert fleet.work == tmp_path / "logs" and fleet.flwr_home == tmp_path / "logs" / "flwr-home"
    assert {c["work-dir"] for c in fleet.node_configs} == {str(tmp_path / "logs" / f"client-{i}") for i in range(2)}


def test_a_checkpoint_inside_out_is_refused_before_out_is_cleared(tmp_path, warm, no_launch):
    out = tmp_path / "run"
    save_checkpoint(out / "rounds" / "round-002", build_model("edgecnn", 10, 1),
                    ModelCard("edgecnn", 10, DIGITS, [1, 8, 8], [0.3], [0.4]))
    result = simulate("--checkpoint", out / "rounds" / "round-002", "--out", out, "--overwrite")
    one_line_exit_2(result, f"--out {out}: holds --checkpoint", "never replaces an input")
    assert (out / "rounds" / "round-002" / "model.json").is_file()
    with pytest.raises(InputError, match="holds --checkpoint"):        # the ServerApp's own check (fleet run)
        ServerSettings(out=str(out), checkpoint=str(out / "rounds" / "round-002"), overwrite=True,
                       eval_dataset="digits").validate()


def test_fedavg_with_a_proximal_weight_is_refused():
    with pytest.raises(InputError, match="--proximal-mu 0.5"):
        ServerSettings(out="/r", checkpoint="/w", fleet_strategy="fedavg", proximal_mu=0.5).validate()
    assert ServerSettings(out="/r", checkpoint="/w", fleet_strategy="fedprox", proximal_mu=0.5).validate()


def saved_run(tmp_path, warm, **simulation):
    """A fleet run directory as simulate leaves it after round 0."""
    out = tmp_path / "run"
    sim = {"dataset": "digits", "data_dir": None, "clients": 2, "partition": "dirichlet", "alpha": 0.3,
           "partition_seed": 4, "shard": None, "subset": None, "meters": None, **simulation}
    settings = ServerSettings(out=str(out), checkpoint=str(warm), rounds=3, eval_dataset="digits",
                              simulation=json.dumps(sim)).validate()
    FleetRun(out, settings.to_run_config())
    return out


@pytest.mark.parametrize("flag, value, saved", [
    ("--alpha", "0.5", "0.3"), ("--partition-seed", "0", "4"), ("--clients", "3", "2"),
    ("--rounds", "5", "3"), ("--strategy", "sundew", "dense"),
])
def test_resume_names_the_flag_that_differs_from_the_saved_run(tmp_path, warm, no_launch, flag, value, saved):
    out = saved_run(tmp_path, warm)
    result = simulate("--resume", "--out", out, flag, value)
    one_line_exit_2(result, f"{flag} {value}", f"started with {flag} {saved}")
    assert no_launch == []


def test_resume_deals_the_clients_data_as_the_saved_run_did(tmp_path, warm, no_launch):
    out = saved_run(tmp_path, warm)
    result = simulate("--resume", "--out", out, "--alpha", "0.3", "--timeout", "99")
    assert isinstance(result.exception, Launched), result.output
    (configs,) = no_launch
    assert len(configs) == 2
    assert all(c["partition"] == "dirichlet" and c["alpha"] == 0.3 and c["partition-seed"] == 4 for c in configs)


def test_simulated_clients_get_their_memory_budget_in_their_node_config(tmp_path, warm, no_launch):
    result = simulate("--checkpoint", warm, "--out", tmp_path / "run", "--memory-budget", "12.5")
    assert isinstance(result.exception, Launched), result.output
    (configs,) = no_launch
    assert [c["memory-budget"] for c in configs] == [12.5, 12.5]
    one_line_exit_2(simulate("--checkpoint", warm, "--out", tmp_path / "run", "--memory-budget", "0"),
                    "--memory-budget")

def test_fedprox_pull_is_right_under_a_grad_scaler_and_copies_the_weights_at_the_first_step():
    """A loss scale multiplies the loss gradient only; the proximal gradient mu * (w - w_global) must
    reach the optimizer step unscaled, with or without a scaler. The round's weights are copied at the
    model's first optimizer step, inside the run's measured window (a weight changed before it is the
    one pulled towards), and another model's optimizer (the counter's meta twin) neither copies nor
    pulls."""
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)):
        layer = torch.nn.Linear(3, 1, bias=False)
        opt = torch.optim.SGD(layer.parameters(), lr=1.0)
        twin = torch.nn.Linear(3, 1, bias=False, device="meta")
        twin_opt = torch.optim.SGD(twin.parameters(), lr=1.0)

        def step(x):
            loss = layer(x).sum()        # zero input: the loss itself has zero gradient
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                scaler.step(opt)
                scaler.update()
            opt.zero_grad()

        with proximal_pull(layer, mu=0.5):
            twin(torch.zeros(1, 3, device="meta")).sum().backward()
            twin_opt.step()
            with torch.no_grad():
                layer.weight.add_(2.0)                   # before the first step: part of the round's weights
            start = layer.weight.detach().clone()
            step(torch.zeros(1, 3))                      # copies w0; pulls by 0
            assert torch.equal(layer.weight.detach(), start), scaler
            with torch.no_grad():
                layer.weight.add_(1.0)                   # as if a few steps had moved it
            step(torch.zeros(1, 3))
        # w <- w - lr * mu * (w - w0) with w = w0 + 1
        assert torch.allclose(layer.weight.detach(), start + 0.5), scaler
        step(torch.zeros(1, 3))                          # the pull is gone after the round
        assert torch.allclose(layer.weight.detach(), start + 0.5)


def test_round_directory_stays_in_work_dir_names_the_node_and_defaults_to_a_private_place(tmp_path, monkeypatch):
    work = tmp_path / "work"
    node = parse_node_config({"dataset": "digits", "work-dir": str(work)})
    for run_id in ("../..", "../../victim", "/etc", "..", "a/../../b"):
        path = node.round_dir(1, run_id, "7")
        assert work.resolve() in path.resolve().parents and ".." not in path.parts, (run_id, path)
    assert node.round_dir(1, "r", "7") != node.round_dir(1, "r", "8")      # two SuperNodes, one host
    (work / "run-x").mkdir(parents=True)
    (work / "run-x" / "node-1").symlink_to(tmp_path)                      # planted by someone else
    with pytest.raises(InputError, match="outside"):
        node.round_dir(1, "x", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    default = parse_node_config({"dataset": "digits"}).round_dir(2, "r", "3")
    base = tmp_path / "cache" / "edge-sel" / "fleet"
    assert base in default.parents and not str(default).startswith("/tmp/edge-sel-fleet")
    assert base.stat().st_mode & 0o777 == 0o700 and base.stat().st_uid == os.getuid()


def client(name, energy):
    return {"client": name, "info": {"energy_source": "estimate", "energy_method": "estimated"},
            "metrics": {"num-examples": 10, "samples_trained": 10, "forward_samples": 10, "flops_forward": 5,
                        "flops_backward": 10, "flops_calibration": 4, "flops_train": 19, "flops_eval": 7,
                        "energy_j": energy, "eval_energy_j": 1.0, "wall_s": 1.0, "local_val_acc": 0.5}}


def test_a_round_with_unknown_energy_totals_the_same_live_and_after_resume(tmp_path, warm):
    model = build_model("edgecnn", 10, 1)
    card = ModelCard("edgecnn", 10, DIGITS, [1, 8, 8], [0.3], [0.4])
    run = FleetRun(tmp_path / "run", {"rounds": 3})
    for r, joules in ((0, None), (1, 5.0), (2, float("nan"))):
        run.write_round(r, model, card, {"test_acc": 0.5}, [] if joules is None else [client("0", joules), client("1", 2.0)], {})
    live = json.loads((tmp_path / "run" / "summary.json").read_text())
    resumed = FleetRun(tmp_path / "run", {}, resume=True).write_summary()
    for key in ("totals", "energy_by_client_j"):
        assert json.dumps(resumed[key], sort_keys=True) == json.dumps(live[key], sort_keys=True)
    assert live["totals"]["energy_j"] is None                 # a round's joules are unknown: so is the total
    assert live["energy_by_client_j"] == {"0": None, "1": 4.0}
    # every training pass of the clients, not only forward + backward
    assert live["totals"]["flops_train"] == 2 * 2 * 19 and live["totals"]["flops_calibration"] == 2 * 2 * 4


def test_keep_best_reports_the_validation_accuracy_of_the_weights_sent():
    summary = {"totals": {"flops_train": 9, "flops_forward": 2, "flops_backward": 4, "flops_calibration": 3},
               "final": {"val_acc": 0.5, "train_acc": 0.6},
               "kept": {"kept": "best", "kept_epoch": 0, "kept_val_acc": 0.75}}
    metrics, info = round_metrics(summary, 100)
    assert metrics["local_val_acc"] == 0.75 and info["kept"] == "best"
    assert metrics["flops_train"] == 9 and metrics["flops_calibration"] == 3


def test_a_real_client_round_reports_its_full_training_flops_and_kept_accuracy(tmp_path):
    """One client's round on digits with the SEL mask (its guilt threshold is a calibration pass)
    and --keep best; under the node's memory budget a round runs the step its plan counted, as
    finetune does (fp32, the contiguous layout, evaluation at most a training batch), probing nothing
    although the server left the layout and the evaluation batch to the device."""
    from edge_sel.fleet.local import RoundPlan, train_round
    torch.manual_seed(0)
    model = build_model("edgecnn", 10, 1)
    card = ModelCard("edgecnn", 10, DIGITS, [1, 8, 8], [0.3], [0.4])
    # Under a budget (the SEL mask is refused there: its per-step copies are not counted), a plain round.
    node = parse_node_config({"dataset": "digits", "subset": 200, "work-dir": str(tmp_path / "budget"),
                              "meters": "estimate", "memory-budget": 64})
    plan = RoundPlan(1, epochs=1, batch_size=32, sparsity="none", keep="best", run_id="r", memory_format="auto")
    train_round(model.state_dict(), card, node, plan, node_id="5")
    summary = json.loads((tmp_path / "budget" / "run-r" / "node-5" / "round-001" / "summary.json").read_text())
    config = json.loads((tmp_path / "budget" / "run-r" / "node-5" / "round-001" / "config.json").read_text())
    assert (config["memory_budget_mb"], config["precision"], config["eval_precision"], config["memory_format"],
            config["eval_batch_size"]) == (64, "fp32", "fp32", "contiguous", 32)
    assert config["memory_plan"]["budget_mb"] == 64
    for probe in ("layout", "precision"):
        assert summary[probe]["source"] == "given" and summary[probe]["probe_flops"] == 0
    # A client has no test set: no test pass over no images runs at the end, and the epoch's record
    # keeps its evaluation's memory (the pass's nulls overwrote it, and the summary showed the start's).
    records = [json.loads(line) for line in
               (tmp_path / "budget" / "run-r" / "node-5" / "round-001" / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["test_samples_evaluated"] == 0
    assert last["memory_eval_counted_mb"] > 0 and last["memory_eval_measured_mb"] is not None
    assert summary["memory"]["eval_measured_mb"] == max(r["memory_eval_measured_mb"] for r in records)
    node = parse_node_config({"dataset": "digits", "subset": 200, "work-dir": str(tmp_path), "meters": "estimate"})
    plan = RoundPlan(1, epochs=2, batch_size=32, sparsity="mask", keep="best", run_id="r", memory_format="auto")
    _, metrics, info = train_round(model.state_dict(), card, node, plan, node_id="5")
    summary = json.loads((tmp_path / "run-r" / "node-5" / "round-001" / "summary.json").read_text())
    t = summary["totals"]
    assert metrics["flops_train"] == t["flops_train"] > metrics["flops_forward"] + metrics["flops_backward"]
    assert metrics["flops_calibration"] == t["flops_calibration"] > 0
    assert metrics["local_val_acc"] == pytest.approx(summary["kept"]["kept_val_acc"])


def descendants(pid):
    try:
        return {p.pid: " ".join(p.cmdline()) for p in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {}


def running(pids):
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            pass
    return out


def test_sigterm_to_simulate_stops_every_flower_process(tmp_path, warm):
    pytest.importorskip("flwr")
    cmd = [sys.executable, "-m", "edge_sel", "fleet", "simulate", "--dataset", "digits", "--subset", "100",
           "--checkpoint", str(warm), "--out", str(tmp_path / "run"), "--rounds", "50", "--memory-format",
           "contiguous", "--eval-batch-size", "256", "--val-subset", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, str] = {}

    def wait_for(ready, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            seen.update(descendants(proc.pid))
            time.sleep(0.2)
    try:
        # the SuperLink, both SuperNodes and `flwr run` are up; then (briefly) the ServerApp, which writes --out
        wait_for(lambda: sum("flower-supernode" in c for c in seen.values()) == 2
                 and any(" run " in c and "--stream" in c for c in seen.values()), 240)
        wait_for(lambda: any("flwr-serverapp" in c for c in seen.values()), 30)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.count("\n") == 1 and "stopped by SIGTERM" in err and "--resume" in err, err
    assert len(seen) >= 4 and running(seen) == [], {p: seen[p] for p in running(seen)}


def test_resume_with_a_torn_config_json_is_one_line_naming_it(tmp_path, warm, no_launch):
    """Before: a config.json cut by a power loss printed a JSONDecodeError traceback."""
    out = saved_run(tmp_path, warm)
    torn = (out / "config.json").read_bytes()
    (out / "config.json").write_bytes(torn[:len(torn) // 2])
    one_line_exit_2(simulate("--resume", "--out", out), str(out / "config.json"), "unreadable")
    (out / "config.json").write_text("[1, 2]")
    one_line_exit_2(simulate("--resume", "--out", out), str(out / "config.json"))
    assert no_launch == []


def fleet_run(tmp_path, warm):
    from edge_sel.cli import cli
    return CliRunner().invoke(cli, ["fleet", "run", "--superlink", "127.0.0.1:9", "--insecure",
                                    "--checkpoint", str(warm), "--eval-dataset", "digits",
                                    "--out", str(tmp_path / "remote-run")])


def test_a_superlink_that_does_not_answer_the_submit_is_one_line(tmp_path, warm, monkeypatch):
    """Before: `flwr run` timing out let subprocess.TimeoutExpired escape as a traceback."""
    pytest.importorskip("flwr")
    from edge_sel.fleet import remote

    def silent(args, **kw):
        raise subprocess.TimeoutExpired(args, kw.get("timeout"))
    monkeypatch.setattr(remote.subprocess, "run", silent)
    one_line_exit_2(fleet_run(tmp_path, warm), "--superlink", "the run was not started", "did not answer")


def test_a_silent_superlink_after_the_run_is_one_line_exit_1(tmp_path, warm, monkeypatch):
    pytest.importorskip("flwr")
    from edge_sel.fleet import remote
    monkeypatch.setattr(remote, "submit", lambda *a: 7)
    monkeypatch.setattr(remote, "follow", lambda *a: None)

    def silent(args, **kw):
        raise subprocess.TimeoutExpired(args, kw.get("timeout"))
    monkeypatch.setattr(remote.subprocess, "run", silent)
    result = fleet_run(tmp_path, warm)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert "fleet run 7 unknown" in result.stderr and "did not answer" in result.stderr and "--resume" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_submitting_is_a_clean_stop(tmp_path, warm, monkeypatch, signum):
    """Before: a SIGTERM during submit ended the process without a word (no stop_on_signals yet), a
    Ctrl-C printed the generic line without saying the run may have been taken."""
    pytest.importorskip("flwr")
    from edge_sel.fleet import remote

    def signalled(args, **kw):
        os.kill(os.getpid(), signum)
        time.sleep(5)                       # the handler interrupts this
        raise AssertionError("the signal was not turned into a stop")
    monkeypatch.setattr(remote.subprocess, "run", signalled)

    def not_handled(*_):                    # a SIGTERM the command does not handle must not end pytest
        raise RuntimeError("the signal reached the default handler")
    previous = signal.signal(signal.SIGTERM, not_handled)
    try:
        result = fleet_run(tmp_path, warm)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 128 + signum, result.output
    assert result.stderr.count("\n") == 1 and "while submitting" in result.stderr and "flwr ls" in result.stderr
