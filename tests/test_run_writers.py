"""One writer per run, one version per start, no write through a planted name: a resume claims its
run as a fresh run does, a run started from the deployed link takes every file and its digest from
the one version the link named when the run opened it, and the temporary files a run writes are made
by it alone."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import PINNED_CHOICES, SAME_CHOICES
from test_output_rules import another_command
from edge_sel.config import TrainConfig
from edge_sel.core.checkpoint import save_checkpoint, weights_digest
from edge_sel.core.outputs import MARKER
from edge_sel.engine.night import deployed_swap as swap
from edge_sel.engine.runs import run as run_module
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.errors import InputError, InUseError
from edge_sel.models import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

FINETUNE = ["--dataset", "synthetic", "--epochs", "2", "--batch-size", "16", "--checkpoint-every", "4",
            "--quiet", "--seed", "7", *SAME_CHOICES]


def cli(*args):
    return [sys.executable, "-m", "edge_sel", *map(str, args)]


@pytest.fixture(scope="module")
def killed(tiny_warm, tmp_path_factory) -> Path:
    """A fine-tune killed like a power cut after its first step: a run with a state to resume (each
    test resumes a copy)."""
    out = tmp_path_factory.mktemp("killed") / "run"
    proc = subprocess.run(cli("finetune", "--checkpoint", tiny_warm, "--out", out, *FINETUNE), capture_output=True,
                          text=True, env={**os.environ, "EDGE_SEL_FAULT_KILL_AT": "step-1"}, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / "state" / "current.pt").is_file() and not (out / "summary.json").exists()
    return out


def copy_of(run, where) -> Path:
    shutil.copytree(run, where, symlinks=True)
    return where


def paused_resume(run):
    """`finetune --resume RUN` in another process, returned once it is writing a state (it pauses
    there: the run is being written)."""
    proc = subprocess.Popen(cli("finetune", "--resume", run, "--quiet"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EDGE_SEL_FAULT_SLOW_STATE_WRITE": "300"})
    while True:
        line = proc.stderr.readline()
        assert line, f"the resume ended before its first state write: {proc.communicate()}"
        if "state write in progress" in line:
            return proc


def test_a_second_writer_of_a_run_resume_included_is_refused_in_one_line(tiny_warm, killed, tmp_path):
    """On the old code a resume took no claim: a second `--resume` of the same run, started while the
    first still ran, trained the same epochs into the same directory and exited 0, and a fresh
    `--overwrite` replaced the run under the resume."""
    run = copy_of(killed, tmp_path / "run")
    first = paused_resume(run)
    try:
        second = subprocess.run(cli("finetune", "--resume", run, "--quiet"), capture_output=True, text=True,
                                timeout=300)
        fresh = subprocess.run(cli("finetune", "--checkpoint", tiny_warm, "--out", run, "--overwrite", *FINETUNE),
                               capture_output=True, text=True, timeout=300)
    finally:
        first.kill()
        first.wait()
    assert (second.returncode, second.stderr.splitlines()) == (2, [
        f"edge-sel: error: --resume {run}: another edge-sel process is writing this run now (it holds {MARKER} "
        f"locked); wait for it to end"])
    assert fresh.returncode == 2 and "another edge-sel command is writing it now" in fresh.stderr, fresh.stderr
    assert not (run / "summary.json").exists() and (run / "state" / "current.pt").is_file()


def test_a_resume_of_a_run_another_process_writes_is_refused_before_reading_it(tmp_path):
    """A run still in its first process (its marker held) is never resumed beside it: refused before
    its config is read, as an InUseError, which a night re-raises instead of setting the run aside."""
    run = tmp_path / "run"
    finish = another_command(tmp_path, run, "run")
    (run / "config.json").write_text("{}")          # not written whole yet
    try:
        with pytest.raises(InUseError, match=f"--resume {run}: another edge-sel process is writing this run now"):
            run_module.resume(run)
    finally:
        finish()
    with pytest.raises(InputError, match="unreadable run configuration"):
        run_module.resume(run)          # claimed once the other has ended, and released on refusing
    run_module.claim_in_place(run)
    run_module.release_claim(run)


def versions(warm, tmp_path):
    """Two versions of a checkpoint with other weights (the same card and source memory)."""
    model, card = load_checkpoint(warm)
    one, two = copy_of(warm, tmp_path / "one"), copy_of(warm, tmp_path / "two")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    save_checkpoint(two, model, card)
    return one, two


def test_a_run_takes_every_file_and_its_digest_from_the_version_it_opened(tiny_warm, tmp_path, monkeypatch):
    """On the old code a promote landing after the card and weights were read left a run that trained
    version one's weights and recorded version two's digest (the bank and source memory from two)."""
    one, two = versions(tiny_warm, tmp_path)
    deployed = tmp_path / "deployed"
    first = swap.swap_in(one, deployed)
    read, real = [], run_module.load_checkpoint

    def load_then_promote(path):
        loaded = real(path)
        read.append(Path(path).resolve())
        swap.swap_in(two, deployed)         # a promote between the run's reads of its start
        return loaded
    monkeypatch.setattr(run_module, "load_checkpoint", load_then_promote)
    seen = {}
    for name in ("load_memory", "make_bank"):
        def spy(*args, _real=getattr(run_module, name), _name=name):
            seen[_name] = Path(args[1] if _name == "make_bank" else args[0]).resolve()
            return _real(*args)
        monkeypatch.setattr(run_module, name, spy)
    cfg = TrainConfig(epochs=1, batch_size=32, seed=1, **PINNED_CHOICES)
    out = tmp_path / "run"
    run_module.finetune(deployed, DataOptions("synthetic", subset=64), cfg, out, quiet=True)
    assert deployed.resolve() != first.resolve()            # the promote did land
    config = json.loads((out / "config.json").read_text())
    assert read == [first.resolve()] and seen == {"load_memory": first.resolve(), "make_bank": first.resolve()}
    assert config["checkpoint_sha256"] == weights_digest(one) != weights_digest(two)
    assert config["checkpoint"] == str(deployed)            # named as given: a resume sees a later promote


def test_a_link_planted_at_a_temporary_name_is_never_written_through(killed, tmp_path):
    """The old names were fixed, or this process's pid: a link planted there made a resume write its
    records (or its summary, model, state) into the file the link named."""
    run = copy_of(killed, tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's\n")
    pid = os.getpid()
    links = [run / name for name in (".metrics.csv.tmp", ".metrics.jsonl.tmp", f".summary.json.tmp{pid}",
                                     f".model.safetensors.tmp{pid}", f".model.json.tmp{pid}",
                                     f"state/.state.tmp{pid}")]
    for link in links:
        link.symlink_to(victim)
    summary = run_module.resume(run, quiet=True)
    assert victim.read_text() == "the user's\n"
    assert all(link.is_symlink() for link in links)
    assert summary["epochs_run"] == 2 and load_file(run / "model.safetensors")
    assert sorted(p.name for p in run.iterdir() if ".tmp" in p.name) == sorted(l.name for l in links[:-1])


def test_a_run_that_failed_in_a_process_that_lives_on_is_free_to_resume(tiny_warm, tmp_path, monkeypatch):
    """A night or the Python API runs in a process that outlives a failed run: the run's claim ends
    with the failure, as a command's ends with its process (the claim had held it until the end of
    that process, and every resume from elsewhere was refused)."""
    from edge_sel.engine.runs import training
    from edge_sel.errors import WriteError

    def full_disk(*args, **kwargs):
        raise WriteError("summary.json: cannot write (No space left on device)")
    monkeypatch.setattr(training, "summarize", full_disk)
    out = tmp_path / "run"
    with pytest.raises(WriteError):
        run_module.finetune(tiny_warm, DataOptions("synthetic", subset=64),
                            TrainConfig(epochs=1, batch_size=32, seed=1, **PINNED_CHOICES), out, quiet=True)
    free = subprocess.run([sys.executable, "-c", "import fcntl, os, sys; fcntl.flock(os.open(sys.argv[1], os.O_RDONLY), "
                           "fcntl.LOCK_EX | fcntl.LOCK_NB)", out / MARKER], capture_output=True, text=True)
    assert free.returncode == 0, free.stderr
