"""benchmarks/gpu_reference.sh and benchmarks/gpu_transfer.sh without training: what their install
stage installs covers every module edge_sel (and the tests and benchmark scripts they run) imports,
and a stage that its limit stops is reported partial, never as a finished result. Each script runs
here with a stand-in for python that records its arguments and answers at once (or sleeps, to be
stopped)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_needs  # noqa: E402

# Records each call's arguments (one a line, a blank line after each call); sleeps where they
# contain $SLEEP_ON; writes a merged table where the merge is called.
STAND_IN = r"""#!/bin/bash
printf '%s\n' "$@" "" >>"$CALLS"
case " $* " in
  *"$SLEEP_ON"*) exec sleep 60 ;;
  *merge_bench_transfer.py*) out=$2; [ "$1" = --out ] || out=$3; mkdir -p "$out"
      echo "| method | test % |" >"$out/table.md"; echo '{}' >"$out/results.json" ;;
esac
exit 0
"""


def run_script(tmp_path, script, sleep_on="never-matches", **env):
    stand_in = tmp_path / "python"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    calls = tmp_path / "calls.txt"
    full = dict(os.environ, PYTHON=str(stand_in), CALLS=str(calls), SLEEP_ON=sleep_on, OUT=str(tmp_path / "out"),
                WORK=str(tmp_path / "work"), CARRY=str(tmp_path / "carry"), **env)
    result = subprocess.run(["bash", str(REPO / "benchmarks" / script)], cwd=REPO, env=full, capture_output=True,
                            text=True, timeout=120)
    text = calls.read_text() if calls.exists() else ""
    return result, [c.splitlines() for c in text.split("\n\n") if c.strip()]


def installed(calls):
    """The requirements every `-m pip install` call named (its options and their values left out)."""
    named = []
    for args in calls:
        if args[:3] == ["-m", "pip", "install"]:
            rest = args[3:]
            skip = {i + 1 for i, a in enumerate(rest) if a in ("--find-links", "-f")}
            named += [a for i, a in enumerate(rest) if not a.startswith("-") and i not in skip]
    return named


@pytest.mark.parametrize("script", ["gpu_reference.sh", "gpu_transfer.sh"])
def test_the_install_stage_brings_every_module_edge_sel_imports(tmp_path, script):
    result, calls = run_script(tmp_path, script)
    wanted = installed(calls)
    assert wanted, result.stdout + result.stderr
    image = gpu_needs.bash_list("GPU_IMAGE_HAS")
    assert gpu_needs.missing(wanted, image) == {}, (script, wanted)


def test_the_check_names_a_module_edge_sel_imports_that_nothing_brings():
    wheels, image = gpu_needs.bash_list("GPU_WHEELS"), gpu_needs.bash_list("GPU_IMAGE_HAS")
    assert "psutil" in wheels and gpu_needs.missing(wheels, image) == {}
    lost = gpu_needs.missing([w for w in wheels if w != "psutil"], image)
    assert list(lost) == ["psutil"] and "edge_sel imports psutil" in lost["psutil"]     # device_caps.py
    assert "pytest" in gpu_needs.missing([w for w in wheels if w != "pytest"], image)
    # An import an ImportError guards, or an extra's (flwr), is not needed.
    assert "flwr" not in gpu_needs.needed()


def test_a_stage_its_limit_stops_is_partial_and_the_script_says_so(tmp_path):
    result, _ = run_script(tmp_path, "gpu_reference.sh", sleep_on="work/dense --overwrite", SMOKE="1", LIMIT_DENSE="5")
    log = (tmp_path / "out" / "run.log").read_text()
    assert result.returncode == 3, log
    assert "== dense: partial: stopped at its 5 s limit" in log
    assert log.splitlines()[-1].startswith("PARTIAL after") and "dense" in log.splitlines()[-1]
    assert "== sel: ok" in log and "every stage finished" not in log


def test_a_bench_its_limit_stops_makes_its_merged_table_partial(tmp_path):
    result, calls = run_script(tmp_path, "gpu_transfer.sh", sleep_on="--scenario noise --first-seed 1", SMOKE="1",
                               LIMIT_BENCH="5", PACK=str(tmp_path / "pack"))
    log = (tmp_path / "out" / "run.log").read_text()
    assert result.returncode == 3, log
    assert "== bench-noise-1: partial: stopped at its 5 s limit" in log
    noise = (tmp_path / "out" / "noise-table.md").read_text()
    assert noise.startswith("**PARTIAL**: bench-noise-1 did not finish")
    assert not (tmp_path / "out" / "clean-table.md").read_text().startswith("**PARTIAL**")
    assert "bench-noise-1: partial" in (tmp_path / "out" / "stages.txt").read_text()


def test_a_summary_with_a_stopped_stage_starts_partial(tmp_path):
    import json

    import gpu_reference
    (tmp_path / "stages.jsonl").write_text("\n".join(json.dumps(s) for s in [
        {"stage": "data", "result": "ok", "wall_s": 3, "limit_s": 45, "bench": False},
        {"stage": "dense", "result": "partial: stopped at its 300 s limit", "wall_s": 300, "limit_s": 300,
         "bench": True}]) + "\n")
    assert gpu_reference.summarize(tmp_path, tmp_path) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["partial"] == ["dense"]
    assert "**PARTIAL**: dense did not finish" in (tmp_path / "table.md").read_text()


def test_alone_runs_one_bench_with_nothing_beside_it(tmp_path):
    warmup = tmp_path / "warm128-a"
    result, _ = run_script(tmp_path, "gpu_transfer.sh", SMOKE="1", ALONE="1", CHOSEN=str(warmup),
                           PACK=str(tmp_path / "pack"))
    assert result.returncode == 2 and "ALONE=1 needs CHOSEN=a finished warmup" in result.stdout
    warmup.mkdir()
    (warmup / "model.json").write_text("{}")
    result, calls = run_script(tmp_path, "gpu_transfer.sh", SMOKE="1", ALONE="1", CHOSEN=str(warmup),
                               PACK=str(tmp_path / "pack"))
    assert result.returncode == 0, result.stdout
    trains = [c for c in calls if "edge_sel" in c and ("pretrain" in c or "transfer" in c)]
    assert len(trains) == 1 and "clean" in trains[0] and str(warmup) in trains[0]
    assert (tmp_path / "out" / "alone-table.md").is_file()


def test_warmups_that_shared_the_card_say_their_joules_are_not_their_own(tmp_path, capsys):
    import json

    import gpu_transfer
    for name, shared in (("warm128-a", 1), ("warm128-b", 0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(json.dumps(
            {"epoch": 0, "val_acc": 0.5, "energy_j": 10.0, "energy_method": "counter+shared" if shared else "counter",
             "energy_shared_with": shared}) + "\n")
    assert gpu_transfer.warmups(tmp_path, tmp_path / "warmups.json") == 0
    a, b = capsys.readouterr().out.splitlines()
    assert "shared with 1 other process(es) on the card: not its own" in a and "shared" not in b
    assert json.loads((tmp_path / "warmups.json").read_text())[0]["epochs"][0]["energy_shared_with"] == 1
