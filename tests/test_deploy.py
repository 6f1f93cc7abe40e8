"""deploy/: the systemd units and their power guard, the Jetson Dockerfile, and push.py against a
local directory and a fake ssh (no network)."""

import configparser
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fake_sysfs import battery, mains, write

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
DOCKERFILE = DEPLOY / "jetson" / "Dockerfile"
INSTALLED_AT = "/usr/local/lib/edge-sel/"


# ---- systemd ----------------------------------------------------------------------------------

def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str   # systemd keys are case-sensitive
    parser.read_string((SYSTEMD / name).read_text())
    return parser


def test_service_and_timer_structure():
    service = unit("edge-sel-finetune.service")
    assert service.sections() == ["Unit", "Service"]
    assert service["Unit"]["Description"]
    s = service["Service"]
    assert s["Type"] == "oneshot" and s["User"] and s["TimeoutStartSec"]
    for key, script in (("ExecCondition", "power-ok.sh"), ("ExecStart", "run-finetune.sh")):
        assert s[key] == INSTALLED_AT + script
        path = SYSTEMD / script
        assert path.is_file() and path.stat().st_mode & stat.S_IXUSR, f"{script} must be executable"
    timer = unit("edge-sel-finetune.timer")
    assert timer.sections() == ["Unit", "Timer", "Install"]
    t = timer["Timer"]
    assert re.fullmatch(r"\*-\*-\* \d\d:\d\d:\d\d", t["OnCalendar"])
    assert t["Persistent"] == "true"
    assert t["Unit"] == "edge-sel-finetune.service" and (SYSTEMD / t["Unit"]).is_file()
    assert timer["Install"]["WantedBy"] == "timers.target"


def _installed_copy(tmp_path: Path, extra: str = "") -> list[Path]:
    """The units with their scripts' install path pointing at this checkout (verify checks that
    every Exec* command exists and is executable)."""
    copies = []
    for name in ("edge-sel-finetune.service", "edge-sel-finetune.timer"):
        text = (SYSTEMD / name).read_text().replace(INSTALLED_AT, f"{SYSTEMD}/")
        if name.endswith(".service"):
            text += extra
        (tmp_path / name).write_text(text)
        copies.append(tmp_path / name)
    return copies


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    (tmp_path / "good").mkdir()
    good = _installed_copy(tmp_path / "good")
    result = subprocess.run(["systemd-analyze", "verify", *map(str, good)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    # The check is real: a misspelt key or a missing command is reported.
    (tmp_path / "bad").mkdir()
    bad = _installed_copy(tmp_path / "bad", "ExecStartPost=/nonexistent/edge-sel-report\n")
    result = subprocess.run(["systemd-analyze", "verify", *map(str, bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "/nonexistent/edge-sel-report" in result.stderr


def power_ok(root: Path, **env) -> subprocess.CompletedProcess:
    environment = {"PATH": os.environ["PATH"], "EDGE_SEL_SYSFS_ROOT": str(root), **env}
    return subprocess.run(["sh", str(SYSTEMD / "power-ok.sh")], env=environment, capture_output=True, text=True)


def set_capacity(root: Path, name: str, percent) -> None:
    write(root, f"sys/class/power_supply/{name}/capacity", percent)


def test_power_guard_runs_on_mains_and_without_a_battery(tmp_path):
    assert power_ok(tmp_path / "empty").returncode == 0                 # a Jetson, a desktop
    battery(tmp_path, "BAT0", "Charging")
    set_capacity(tmp_path, "BAT0", 5)
    mains(tmp_path, "ADP1", online=True)
    result = power_ok(tmp_path)
    assert result.returncode == 0 and "ADP1 online" in result.stdout


def test_power_guard_on_battery_follows_the_threshold(tmp_path):
    battery(tmp_path, "BAT0", "Discharging", power_uw=9_000_000)
    mains(tmp_path, "AC", online=False)
    set_capacity(tmp_path, "BAT0", 80)
    assert power_ok(tmp_path).returncode == 0
    set_capacity(tmp_path, "BAT0", 30)
    result = power_ok(tmp_path)
    assert result.returncode == 1 and "30%, below 50%" in result.stderr   # 1: skip, not fail
    assert power_ok(tmp_path, EDGE_SEL_MIN_BATTERY="25").returncode == 0
    battery(tmp_path, "BAT1", "Discharging")
    set_capacity(tmp_path, "BAT1", 90)
    assert power_ok(tmp_path).returncode == 0                           # mean of 30 and 90


def test_power_guard_ignores_peripherals_and_rejects_bad_settings(tmp_path):
    battery(tmp_path, "hidpp_battery_0", "Discharging")
    write(tmp_path, "sys/class/power_supply/hidpp_battery_0/scope", "Device")
    set_capacity(tmp_path, "hidpp_battery_0", 3)
    assert power_ok(tmp_path).returncode == 0
    assert power_ok(tmp_path, EDGE_SEL_MIN_BATTERY="half").returncode == 255    # a failure, not a skip
    battery(tmp_path, "BAT0", "Discharging")
    set_capacity(tmp_path, "BAT0", "unknown")
    assert power_ok(tmp_path).returncode == 1


def fake_edge_sel(tmp_path: Path, exit_code: int = 0) -> dict:
    """An edge-sel stand-in that logs its arguments and the settings it was given, and exits `exit_code`."""
    fake = tmp_path / "edge-sel"
    fake.write_text('#!/bin/sh\necho "$*" >> "$ARGS_OUT"\n'
                    'echo "$EDGE_SEL_HOME $EDGE_SEL_DATASET $EDGE_SEL_EPOCHS" >> "$ARGS_OUT"\n'
                    f'exit {exit_code}\n')
    fake.chmod(0o755)
    return {"PATH": os.environ["PATH"], "EDGE_SEL_BIN": str(fake), "ARGS_OUT": str(tmp_path / "args"),
            "EDGE_SEL_HOME": str(tmp_path / "home"), "EDGE_SEL_EPOCHS": "3", "EDGE_SEL_DATASET": "digits"}


def calls(tmp_path: Path) -> list[list[str]]:
    return [line.split() for line in (tmp_path / "args").read_text().splitlines()]


def test_run_script_hands_the_night_to_edge_sel_night_with_its_settings(tmp_path):
    """What a night does is edge-sel night's (engine/night/life.py, tests/test_life.py); the script passes
    the environment on and splits the extra options on spaces."""
    env = {**fake_edge_sel(tmp_path), "EDGE_SEL_EXTRA_ARGS": "--strategy dihcl --seed 4"}
    subprocess.run(["sh", str(SYSTEMD / "run-finetune.sh")], env=env, check=True)
    assert calls(tmp_path) == [["night", "--strategy", "dihcl", "--seed", "4"],
                               [str(tmp_path / "home"), "digits", "3"]]     # no --quiet: the journal gets the lines


def test_run_script_passes_extra_options_that_look_like_globs_unchanged(tmp_path):
    """Before: the split globbed, so a value like [8,16] became the name of a file it matched."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    for name in ("windows=8", "x1", "notes.txt"):
        (workdir / name).write_text("")
    extra = "--method-option windows=[8,16] --tag x? --note *.txt"
    env = {**fake_edge_sel(tmp_path), "EDGE_SEL_EXTRA_ARGS": extra}
    subprocess.run(["sh", str(SYSTEMD / "run-finetune.sh")], env=env, cwd=workdir, check=True)
    assert calls(tmp_path)[0] == ["night", *extra.split()]


@pytest.mark.parametrize("night_exit", [0, 1, 2, 130, 143])
def test_run_script_exits_as_the_night_did(tmp_path, night_exit):
    result = subprocess.run(["sh", str(SYSTEMD / "run-finetune.sh")], env=fake_edge_sel(tmp_path, night_exit))
    assert result.returncode == night_exit


def test_finetune_unit_accepts_a_clean_stop():
    """A night judged and not promoted exits 0 (edge-sel night); a stop exits 130/143 and is resumed."""
    unit = (SYSTEMD / "edge-sel-finetune.service").read_text()
    [line] = [ln for ln in unit.splitlines() if ln.startswith("SuccessExitStatus=")]
    assert set(line.split("=", 1)[1].split()) == {"130", "143"}


# ---- the Jetson container ---------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_structure():
    instructions = dockerfile_instructions()
    args = dict(a.split("=", 1) for kind, a in instructions if kind == "ARG" and "=" in a)
    base = args["BASE_IMAGE"]
    assert re.fullmatch(r"[\w./-]+:r36\.\d+\.\d+", base), "the base image is pinned to an L4T r36 tag"
    stages = []
    for kind, value in instructions:
        if kind == "FROM":
            image, _, stage = value.partition(" AS ")
            assert image in ("${BASE_IMAGE}", *stages), f"FROM {image}: neither the pinned base nor a stage"
            stages.append(stage.strip())
    assert stages == ["runtime", "ort-build", "runtime-ort"]
    runs = " ".join(value for kind, value in instructions if kind == "RUN")
    # torch comes from the base image: never from pip.
    assert not re.search(r"pip3? install[^&;]*\btorch\b", runs)
    assert "pip3 install --no-deps ." in runs and "deps_without_torch.py" in runs
    assert "--enable_training_apis" in runs
    users = [value for kind, value in instructions if kind == "USER"]
    assert users[-1] not in ("0", "root") and users[0] not in ("0", "root")
    assert ("HEALTHCHECK", "NONE") in instructions     # a batch job: documented in the file
    for kind, value in instructions:
        if kind == "COPY" and not value.startswith("--from"):
            for source in value.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_dockerignore_keeps_what_the_image_copies():
    ignore = (DEPLOY / "jetson" / "Dockerfile.dockerignore").read_text().splitlines()
    for needed in ("pyproject.toml", "setup.py", "edge_sel/", "profiles/",
                   "deploy/jetson/deps_without_torch.py"):
        assert f"!{needed}" in ignore


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_dockerfile_passes_hadolint():
    result = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dependencies_for_the_image_leave_torch_out():
    result = subprocess.run([sys.executable, str(DEPLOY / "jetson" / "deps_without_torch.py"), "edge-sel"],
                            capture_output=True, text=True, check=True)
    requirements = result.stdout.split("\n")
    names = [re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in requirements if r]
    assert "torch" not in names and "torchvision" not in names
    assert {"numpy", "click", "safetensors"} <= set(names)
    assert not any("extra" in r for r in requirements)


# ---- push.py ----------------------------------------------------------------------------------

def push(*args, env=None, expect=0) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    result = subprocess.run([sys.executable, str(DEPLOY / "push.py"), *map(str, args)], env=environment,
                            capture_output=True, text=True)
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def make_checkpoint(path: Path, weights: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(weights)
    (path / "model.json").write_text('{"architecture": "edgecnn"}')
    return path


def make_device_runs(device: Path) -> None:
    for run, finished in (("20250101T023000Z", True), ("20250102T023000Z", False)):
        d = device / "runs" / run
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text('{"epoch": 0}\n')
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"weights")
        (d / "bn_bank.safetensors").write_bytes(b"the camera's own images")
        if finished:
            (d / "summary.json").write_text('{"epochs_run": 1}')


def test_push_and_pull_with_a_local_directory(tmp_path):
    device = tmp_path / "device"
    ckpt = make_checkpoint(tmp_path / "ckpt", b"first")
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    (data / "cat" / "1.png").write_bytes(b"png")
    out = push("push", f"local:{device}", "--checkpoint", ckpt, "--data", data).stdout
    assert f"local:{device}/checkpoints/warmup" in out
    assert (device / "checkpoints/warmup/model.safetensors").read_bytes() == b"first"
    assert (device / "data/cat/1.png").read_bytes() == b"png"
    # A second push replaces the checkpoint as a whole: no file of the old one survives.
    (device / "checkpoints/warmup/stale.txt").write_text("old")
    shutil.rmtree(ckpt)
    push("push", f"local:{device}", "--checkpoint", make_checkpoint(ckpt, b"second"))
    assert sorted(p.name for p in (device / "checkpoints/warmup").iterdir()) == ["model.json", "model.safetensors"]
    assert (device / "checkpoints/warmup/model.safetensors").read_bytes() == b"second"
    assert sorted(p.name for p in (device / "checkpoints").iterdir()) == ["warmup"]

    make_device_runs(device)
    back = tmp_path / "back"
    out = push("pull", f"local:{device}", "--into", back).stdout
    assert "20250101T023000Z (finished)" in out and "20250102T023000Z (in progress or stopped)" in out
    assert sorted(p.name for p in (back / "20250101T023000Z").iterdir()) == \
        ["config.json", "metrics.jsonl", "summary.json"]                 # records, not the model
    push("pull", f"local:{device}", "--into", back, "--with-models")
    assert (back / "20250102T023000Z" / "model.safetensors").read_bytes() == b"weights"
    # A bank keeps the device's own camera images: it never leaves the device, models or not.
    assert not any(p.name == "bn_bank.safetensors" for p in back.rglob("*"))


def test_push_and_pull_through_the_ssh_command(tmp_path):
    """EDGE_SEL_SSH replaces ssh; this fake one logs its arguments and runs the remote script here."""
    log = tmp_path / "ssh.log"
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text('#!/bin/sh\necho "$@" >> "$SSH_LOG"\nfor last; do :; done\nexec sh -c "$last"\n')
    fake_ssh.chmod(0o755)
    env = {"EDGE_SEL_SSH": f"{fake_ssh} -p 2222", "SSH_LOG": str(log)}
    device = tmp_path / "device"
    push("push", f"jetson@orin:{device}", "--checkpoint", make_checkpoint(tmp_path / "ckpt", b"w"),
         "--name", "cifar", env=env)
    assert (device / "checkpoints/cifar/model.safetensors").read_bytes() == b"w"
    make_device_runs(device)
    push("pull", f"jetson@orin:{device}", "--into", tmp_path / "back", env=env)
    assert (tmp_path / "back/20250101T023000Z/summary.json").is_file()
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and all(call.startswith("-p 2222 jetson@orin ") for call in calls)


def test_dry_run_and_bad_input(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", b"w")
    out = push("push", "jetson@orin", "--checkpoint", ckpt, "--dry-run").stdout
    assert out.startswith(f"tar -cf - -C {ckpt} . | ssh jetson@orin ")
    assert "/var/lib/edge-sel/checkpoints/warmup" in out
    assert not (tmp_path / "back").exists()
    assert "nothing to send" in push("push", "local:/tmp/x", expect=2).stderr
    assert "not a checkpoint" in push("push", f"local:{tmp_path}/d", "--checkpoint", tmp_path, expect=2).stderr
    assert "--name" in push("push", f"local:{tmp_path}/d", "--checkpoint", ckpt, "--name", "../x", expect=2).stderr
    assert "expected [user@]host" in push("pull", ":/x", "--into", tmp_path / "b", expect=2).stderr
    assert "no runs directory" in push("pull", f"local:{tmp_path}/none", "--into", tmp_path / "b", expect=1).stderr
