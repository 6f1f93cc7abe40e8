"""A checkpoint is data: rebuilding its model never runs code the user did not choose."""

import json
import shutil

import pytest

from helpers import run_main
from edge_sel.models.spec import TRUST_ENV
from edge_sel.engine.night import journal

pytestmark = pytest.mark.usefixtures("one_thread")

FINETUNE = ["--dataset", "digits", "--shard", "1/2", "--epochs", "1", "--quiet", "--batch-size", "64"]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    from helpers import digits_warmup_with_memory
    return digits_warmup_with_memory(tmp_path_factory.mktemp("trust") / "warm")


def test_a_card_that_names_importable_code_is_refused_unless_trusted(warm, tmp_path, capsys, monkeypatch):
    """Before: a model.json naming torch.hub:load with a local repo ran that repo's hubconf.py on
    finetune (with source github it would fetch code)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    marker = tmp_path / "ran"
    (repo / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(warm, ckpt)
    card = json.loads((ckpt / "model.json").read_text())
    card["model"] = {"name": "torch.hub:load", "kind": "import",
                     "kwargs": {"repo_or_dir": str(repo), "model": "anything", "source": "local"}}
    (ckpt / "model.json").write_text(json.dumps(card))
    monkeypatch.setenv(TRUST_ENV, "0")      # and back to as it was after the test, whatever the CLI set
    for command in (["finetune", "--checkpoint", ckpt, "--out", tmp_path / "run", *FINETUNE],
                    ["predict", "--checkpoint", ckpt, tmp_path / "repo"],
                    ["export", "--checkpoint", ckpt, "--out", tmp_path / "art"]):
        code, err = run_main(command, capsys)
        assert code == 2 and "torch.hub:load" in err and "--trust-model-code" in err, err
        assert len(err.strip().splitlines()) == 1 and not marker.exists()
    # Trusted (the option here; the variable works the same), the card's code runs.
    run_main(["--trust-model-code", "finetune", "--checkpoint", ckpt, "--out", tmp_path / "run", *FINETUNE], capsys)
    assert marker.exists()


def test_a_model_file_changed_since_pretraining_is_not_imported(tmp_path, capsys, monkeypatch):
    """Before: the file's SHA-256 was recorded and never compared; appended code ran."""
    monkeypatch.setenv(TRUST_ENV, "0")      # and back to as it was after the test, whatever the CLI set
    factory = tmp_path / "mine.py"
    factory.write_text("from edge_sel.models import EdgeCNN\n\n"
                       "def build(num_classes, in_channels=3):\n    return EdgeCNN(num_classes, in_channels)\n")
    code, err = run_main(["pretrain", "--model", f"{factory}:build", "--dataset", "digits", "--shard", "0/2",
                          "--epochs", "1", "--out", tmp_path / "ckpt", "--quiet", "--anchors-per-class", "0"], capsys)
    assert code == 0, err
    recorded = json.loads((tmp_path / "ckpt" / "model.json").read_text())["model"]["file_sha256"]
    marker = tmp_path / "ran"
    with open(factory, "a") as f:
        f.write(f"\nopen({str(marker)!r}, 'w').write('appended code ran')\n")
    code, err = run_main(["finetune", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "run", *FINETUNE], capsys)
    assert code == 2 and str(factory) in err and recorded in err and "changed" in err, err
    assert not marker.exists()


def test_a_night_keeps_no_bank_for_batchnorm_without_running_statistics(tmp_path, capsys, monkeypatch):
    """Before: the night turned the bank on for any model with BatchNorm layers and then refused
    layers that keep no running statistics: every night failed (exit 2) for a bank nobody asked for."""
    monkeypatch.setenv(TRUST_ENV, "0")
    factory = tmp_path / "stateless.py"
    factory.write_text("from torch import nn\n\n"
                       "def build(num_classes, in_channels=1):\n"
                       "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1),\n"
                       "                         nn.BatchNorm2d(8, track_running_stats=False), nn.ReLU(),\n"
                       "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n")
    home = tmp_path / "home"
    code, err = run_main(["pretrain", "--model", f"{factory}:build", "--dataset", "digits", "--shard", "0/2",
                          "--epochs", "1", "--out", home / "warmup", "--quiet", "--anchors-per-class", "10",
                          "--fisher-samples", "50"], capsys)
    assert code == 0, err
    code, err = run_main(["night", "--home", home, "--warmup", home / "warmup", "--dataset", "digits",
                          "--shard", "1/2", "--epochs", "1", "--quiet"], capsys)
    assert code == 0, err
    run = next((home / "runs").iterdir())
    assert json.loads((run / "summary.json").read_text())["config"]["bn_conditions"] == 0


def fake_run(path, tag: str):
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text(tag)
    (path / "model.json").write_text("{}")
    return path


def test_the_model_deployed_before_survives_a_version_never_deployed_and_a_clock_jump(tmp_path):
    """Before: the prune kept the newest other version by modification time, so a version written
    but never deployed (a crash at promote-versioned) or a clock that jumped pushed out the model
    that was deployed before."""
    import os
    from edge_sel.engine.night import deployed_swap
    deployed = tmp_path / "deployed"
    v1 = deployed_swap.swap_in(fake_run(tmp_path / "r1", "one"), deployed)
    v2 = deployed_swap.swap_in(fake_run(tmp_path / "r2", "two"), deployed)
    os.utime(v1, (4e9, 4e9))                           # the clock jumped: v1 looks newest
    v3 = deployed_swap.swap_in(fake_run(tmp_path / "r3", "three"), deployed)
    kept = sorted(p.name for p in v3.parent.iterdir())
    assert kept == sorted([v2.name, v3.name]) and (deployed / "model.safetensors").read_text() == "three"


def test_a_failure_after_the_flip_is_reported_as_deployed_and_recorded(tmp_path, monkeypatch, capsys):
    """Before: an error after the link flip was reported as 'cannot replace the deployed model ...;
    it is unchanged' while the link named the new model, and promote.json was not written."""
    from edge_sel.engine.night import deployed_swap, promote as promote_mod
    deployed = tmp_path / "deployed"
    deployed_swap.swap_in(fake_run(tmp_path / "r1", "one"), deployed)
    run = fake_run(tmp_path / "r2", "two")

    def failing_prune(versions, keep):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(deployed_swap, "_prune", failing_prune)
    monkeypatch.setattr(promote_mod, "decide", lambda *a, **k: promote_mod.Decision(
        True, "better", "beats it"))
    monkeypatch.setattr(promote_mod, "check_candidate", lambda run_dir: None)     # stand-in weights: the swap is tested
    decision = promote_mod.promote(run, deployed)
    assert decision.promote and (deployed / "model.safetensors").read_text() == "two"
    record = journal.last_decision(run)
    assert "No space left" in record["after_swap_error"] and record["version"]
    assert "now holds the run's model" in capsys.readouterr().err


def test_a_damaged_bank_at_the_start_is_set_aside_and_the_night_goes_on(warm, tmp_path, capsys, monkeypatch):
    """Before: a corrupt bn_bank.safetensors beside the deployed weights was refused every night."""
    from edge_sel.core.bn_bank import BANK_FILE
    monkeypatch.setenv(TRUST_ENV, "0")
    home = tmp_path / "home"
    shutil.copytree(warm, home / "warmup")
    (home / "warmup" / BANK_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    from helpers import run_cli
    journal = run_cli("night", "--home", home, "--warmup", home / "warmup", *FINETUNE).output
    assert f"set aside as {BANK_FILE}.damaged" in journal
    assert (home / "warmup" / (BANK_FILE + ".damaged")).is_file() and not (home / "warmup" / BANK_FILE).exists()
    run = next((home / "runs").iterdir())
    assert json.loads((run / "summary.json").read_text())["bn_bank"]["written"]


def test_a_deployed_model_that_no_longer_loads_is_rolled_back_to_the_version_before(warm, tmp_path, monkeypatch):
    """Before: a damaged deployed card failed every night (exit 2) and left nothing that loads."""
    from edge_sel.engine.night import deployed_swap
    from edge_sel.engine.night.life import Home
    from edge_sel.models import load_checkpoint
    from helpers import run_cli
    monkeypatch.setenv(TRUST_ENV, "0")
    home = Home.at(tmp_path / "home")
    shutil.copytree(warm, home.warmup)
    before = deployed_swap.swap_in(shutil.copytree(warm, tmp_path / "r1"), home.deployed)
    damaged = deployed_swap.swap_in(shutil.copytree(warm, tmp_path / "r2"), home.deployed)
    card = home.deployed / "model.json"
    card.write_bytes(card.read_bytes()[:40])
    journal = run_cli("night", "--home", home.runs.parent, *FINETUNE).output
    assert "the deployed model does not load" in journal and f"deployed again ({before.name})" in journal
    assert damaged.with_name(damaged.name + ".damaged").is_dir()
    load_checkpoint(home.deployed)
    run = next(home.runs.iterdir())
    assert json.loads((run / "config.json").read_text())["checkpoint"] == str(home.deployed)


def test_a_deployed_version_whose_bank_is_damaged_is_set_aside_whole_never_served_without_it(warm, tmp_path,
                                                                                               monkeypatch):
    """Before: a damaged bank in the deployed version was renamed inside that version and the
    version served on without it: another model than the one promote had judged (its own
    statistics). A later roll back to that version served it about 5 points past --max-forgetting
    (the chaos nights, 2 of 6 seeds). A version is never changed in place: one whose bank does not
    read does not load, and the version before it is deployed again."""
    from edge_sel.core.bn_bank import BANK_FILE
    from edge_sel.engine.night import deployed_swap, life
    monkeypatch.setenv(TRUST_ENV, "0")
    home = life.Home.at(tmp_path / "home")
    shutil.copytree(warm, home.warmup)
    before = deployed_swap.swap_in(shutil.copytree(warm, tmp_path / "r1"), home.deployed)
    banked = shutil.copytree(warm, tmp_path / "r2")
    (banked / BANK_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")     # torn by a power loss
    damaged = deployed_swap.swap_in(banked, home.deployed)
    said = []
    life.roll_back_damaged_deployed(home, said.append)
    assert home.deployed.resolve() == before
    set_aside = damaged.with_name(damaged.name + deployed_swap.DAMAGED)
    assert (set_aside / BANK_FILE).read_bytes() == (banked / BANK_FILE).read_bytes()       # kept whole for a look
    assert said == [f"edge-sel nightly: the deployed model does not load ({home.deployed / BANK_FILE}: unreadable or "
                    f"corrupt (SafetensorError: Error while deserializing: invalid JSON in header: trailing "
                    f"characters at line 1 column 3)); set aside, the version before it is deployed again "
                    f"({before.name})"]
    life.set_aside_damaged_bank(home.start_checkpoint(), said.append)       # the night's next step: nothing to do
    assert len(said) == 1 and not list(tmp_path.glob(f"home/checkpoints/**/{BANK_FILE}.damaged"))
    assert journal.read(home.deployed)[-1]["version"] == str(before)


def test_a_promotion_is_recorded_before_the_swap(tmp_path, monkeypatch):
    """Before: a crash after the link flipped left a deployed model no promote.json accepted."""
    from edge_sel.engine.night import deployed_swap, promote as promote_mod
    from edge_sel.engine import faults
    deployed = tmp_path / "deployed"
    run = fake_run(tmp_path / "r1", "one")
    monkeypatch.setattr(promote_mod, "decide", lambda *a, **k: promote_mod.Decision(True, "first", "nothing"))
    monkeypatch.setattr(promote_mod, "check_candidate", lambda run_dir: None)     # stand-in weights: the swap is tested
    monkeypatch.setattr(faults, "crash_by_raising", True)
    monkeypatch.setenv(faults.KILL_ENV, "promote-flipped")
    with pytest.raises(faults.InjectedCrash):
        promote_mod.promote(run, deployed)
    assert (deployed / "model.safetensors").read_text() == "one"
    assert journal.last_decision(run)["promote"] is True
