"""A device's life under faults: digits nights, each with one fault drawn from a fixed seed at a
random point (a SIGKILL at a documented fault point, a damaged bank, card or run state, a full disk
at a write, a clock that jumps back). After every night the deployed model loads, is one that
promote accepted (or nothing is deployed and the warmup serves), and has not lost more than
--max-forgetting points on the guard anchors against the warmup.

Nights that need a kill run as `python -m edge_sel night` processes; the others run in this process.
Each kind of fault comes three times, two more are drawn, and the seed orders them; the seed and
what each night met are printed (pytest -s shows them)."""

from __future__ import annotations

import builtins
import datetime
import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import digits_warmup_with_memory
from edge_sel.cli import cli
from edge_sel.core.bn_bank import BANK_FILE
from edge_sel.core.checkpoint import weights_digest
from edge_sel.engine.night import life
from edge_sel.engine.levers.anchors import load_memory
from edge_sel.engine.night.deployed_swap import versions_dir
from edge_sel.engine.evaluation.evaluate import accuracy, forgetting_points, predict_dataset
from edge_sel.engine.faults import KILL_ENV
from edge_sel.engine.night.life import Home

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SEED = 20251123
NIGHTS = 20
MAX_FORGETTING = 3.0
KINDS = ("kill", "bank", "card", "state", "full-disk", "clock")
# The points a night passes (promote's only when it promotes; promote-exchanged is a plain
# directory's migration, which a device that starts with nothing deployed never makes).
KILL_POINTS = ("step-2", "last-state", "tested", "model-written", "promote-staged", "promote-versioned",
               "promote-flipped")
REAL_OPEN = builtins.open


def night_args(home: Path, n: int) -> list[str]:
    """A small night: 200 samples of shard 1/2, one epoch; every other night a low-contrast camera."""
    shift = ["--shift", "corrupt=contrast:4"] if n % 2 else []
    return ["night", "--home", str(home), "--dataset", "digits", "--shard", "1/2", "--subset", "200", *shift,
            "--epochs", "1", "--batch-size", "64", "--profile", "generic", "--memory-format", "contiguous",
            "--eval-batch-size", "256", "--precision", "fp32", "--seed", str(n),
            "--max-forgetting", str(MAX_FORGETTING), "--quiet"]


def damage(path: Path, rng: random.Random) -> None:
    """A truncation or a flipped byte, as a power loss or a bad sector leaves a file."""
    data = path.read_bytes()
    at = rng.randrange(max(len(data), 1))
    if rng.random() < 0.5:
        path.write_bytes(data[:at])
    else:
        path.write_bytes(data[:at] + bytes([data[at] ^ rng.randrange(1, 256)]) + data[at + 1:])


def damage_a_file(kind: str, home: Home, rng: random.Random) -> str:
    """Damage the file a night will read of `kind`; what was damaged (or why nothing could be)."""
    start = home.deployed if (home.deployed / "model.safetensors").is_file() else home.warmup
    if kind == "bank":
        target = start / BANK_FILE
    elif kind == "card":
        if start != home.deployed:
            return "nothing deployed yet (the server's warmup is not the device's to repair)"
        target = start / "model.json"
    else:       # the run state the next night resumes from (the latest run's, finished or not)
        latest = life.latest_run(home.runs)
        states = sorted((latest / "state").glob("*")) if latest is not None and (latest / "state").is_dir() else []
        files = [p for p in states if p.is_file()] + ([latest / "config.json"] if latest is not None else [])
        files = [p for p in files if p.is_file()]
        if not files:
            return "no run state yet"
        target = rng.choice(files)
        if not life.unfinished(latest):
            damage(target, rng)
            return f"{target.relative_to(home.runs.parent)}, of a finished run: not read"
    if not target.is_file():
        return f"no {target.name} at the start"
    damage(target.resolve(), rng)
    return str(target.relative_to(home.runs.parent))


class Clock:
    """Wall time moved back by `back_s` for the night's names and records (monotonic time is not)."""

    def __init__(self, monkeypatch, back_s: float):
        real_time, real_gmtime = time.time, time.gmtime
        monkeypatch.setattr(time, "time", lambda: real_time() - back_s)
        monkeypatch.setattr(time, "gmtime", lambda secs=None: real_gmtime(real_time() - back_s if secs is None else secs))

        class Past(datetime.datetime):
            @classmethod
            def now(cls, tz=None):
                return datetime.datetime.now(tz) - datetime.timedelta(seconds=back_s)
        fake = type(datetime)("datetime")
        fake.__dict__.update(datetime.__dict__)
        fake.datetime = Past
        monkeypatch.setattr(life, "datetime", fake)


def full_disk_at(monkeypatch, nth: int) -> list[str]:
    """The nth file opened for writing, and every one after it, fails with ENOSPC: a disk that fills
    during the night. Returns the names that failed."""
    opened, failed = [0], []

    def fake_open(file, mode="r", *args, **kwargs):
        if isinstance(mode, str) and any(c in mode for c in "wax"):
            opened[0] += 1
            if opened[0] >= nth:
                failed.append(str(file))
                raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return REAL_OPEN(file, mode, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", fake_open)
    return failed


def in_process(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr


def killed_night(args: list[str], point: str) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), KILL_ENV: point}
    p = subprocess.run([sys.executable, "-m", "edge_sel", *args], env=env, capture_output=True, text=True,
                       timeout=120)
    return p.returncode, p.stderr


def accepted(home: Home, warmup_digest: str) -> set[str]:
    """The weights promote accepted in any run (set aside ones included), and the warmup's."""
    digests = {warmup_digest}
    for run in home.runs.iterdir() if home.runs.is_dir() else ():
        try:
            record = json.loads((run / "promote.json").read_text())
        except (OSError, ValueError):
            continue
        if record.get("promote") and (run / "model.safetensors").is_file():
            digests.add(weights_digest(run))
    return digests


def guard_points_lost(home: Home, source_acc: float) -> tuple[float, Path]:
    """What the model a device serves now has lost on the guard anchors against the warmup."""
    import edge_sel
    serving = home.deployed if (home.deployed / "model.safetensors").is_file() else home.warmup
    model, card = edge_sel.load_model(serving)
    from edge_sel.engine.runs.data_options import DataOptions
    memory = load_memory(home.warmup, card, DataOptions("digits", shard="1/2", subset=200).load().train)
    logits = predict_dataset(model, memory.guard, card.mean, card.std, 256)
    return forgetting_points(source_acc, accuracy(logits, memory.guard.labels)), serving


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    return digits_warmup_with_memory(tmp_path_factory.mktemp("chaos") / "warm")


def test_twenty_nights_each_with_a_fault(warm, tmp_path, monkeypatch):
    rng = random.Random(SEED)
    home = Home.at(tmp_path / "device")
    home.warmup.parent.mkdir(parents=True)
    shutil.copytree(warm, home.warmup)
    warmup_digest = weights_digest(home.warmup)
    source_acc = json.loads((home.warmup / "model.json").read_text())["source_memory"]["anchors"]["guard_acc"]
    # Every kind three times, two more drawn, in an order drawn from the seed.
    schedule = [*KINDS * 3, *(rng.choice(KINDS) for _ in range(NIGHTS - 3 * len(KINDS)))]
    rng.shuffle(schedule)
    drawn, log = Counter(schedule), []
    for n, kind in enumerate(schedule):
        args = night_args(home.runs.parent, n)
        with monkeypatch.context() as m:
            if kind == "kill":
                what = rng.choice(KILL_POINTS)
                code, err = killed_night(args, what)
                allowed = {0, -9}
            elif kind in ("bank", "card", "state"):
                what = damage_a_file(kind, home, rng)
                code, err = in_process(args)
                allowed = {0}
                if kind == "card" and what.endswith("model.json"):       # rolled back, kept for a look
                    assert any(v.name.endswith(".damaged") for v in versions_dir(home.deployed).iterdir())
            elif kind == "full-disk":
                nth = rng.randint(1, 10)
                failed = full_disk_at(m, nth)
                code, err = in_process(args)
                m.undo()
                what = f"write {nth}: {Path(failed[0]).name if failed else 'not reached'}"
                allowed = {0, 1} if failed else {0}
            else:
                back = rng.choice([3600.0, 86400.0, 400 * 86400.0])
                Clock(m, back)
                what = f"{back / 86400:g} days back"
                code, err = in_process(args)
                allowed = {0}
        log.append(f"night {n}: {kind} ({what}) -> exit {code}" + (" (killed)" if code == -9 else ""))
        assert code in allowed, (log[-1], err)
        if code not in (0, -9):
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and "Traceback" not in err, (log[-1], err)
        # The device still serves a model promote accepted, within the guard.
        lost, serving = guard_points_lost(home, source_acc)
        assert weights_digest(serving) in accepted(home, warmup_digest), log[-1]
        assert lost <= MAX_FORGETTING, (log[-1], lost)
    print(f"\nchaos seed {SEED}: {NIGHTS} nights, faults drawn {dict(drawn)}\n" + "\n".join(log))
