"""The documentation cannot rot: the site builds in strict mode (every link and anchor found, every
included deploy/ file present), the navigation lists each page once, the README stays a short front door
whose links resolve, and its tour is the one the getting-started page shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_site_builds_strict_with_the_deploy_pages_included(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(REPO / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr
    # The deploy/ write-ups are included, not linked: their sections are on the site's pages.
    assert "Scheduled fine-tunes with systemd" in (site / "deployment" / "index.html").read_text()
    assert "A device joins: the SuperNode service" in (site / "fleet" / "index.html").read_text()
    assert "--enable_training_apis" in (site / "ort-jetson" / "index.html").read_text()


def test_readme_is_a_short_front_door_whose_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert "docs/getting-started.md" in local
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"README links to missing files: {missing}"



def test_readme_keeps_the_two_commands_and_one_command_for_each_job():
    """The front door: `make demo` and `make test` for a fresh machine, then one command for each of the
    three jobs a user comes for; the tour on digits is the getting-started page's, on digits only."""
    blocks = _bash_blocks(README.read_text())
    assert [line.split()[:2] for line in blocks[0].splitlines()] == [["make", "demo"], ["make", "test"]]
    jobs = [line for b in blocks[1:] for line in b.splitlines() if line.strip() and not line.startswith("#")]
    assert len(jobs) == 4 and jobs[0].startswith("edge-sel pretrain") and jobs[2].startswith("edge-sel finetune")
    assert "--memory-budget" in jobs[2] and jobs[3].endswith("bash benchmarks/gpu_reference.sh")
    commands = [line for line in _tour_block().splitlines() if line.startswith("edge-sel ")]
    assert len(commands) <= 10
    # A fresh clone has no CIFAR-10: the tour runs on the embedded digits only.
    assert all("--dataset" not in c or "--dataset digits" in c for c in commands)


def _tour_block() -> str:
    return next(b for b in _bash_blocks((REPO / "docs" / "getting-started.md").read_text()) if "edge-sel pretrain" in b)


def test_every_page_in_the_navigation_once_and_present():
    import yaml

    def pages(entries):
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            if isinstance(value, list):
                yield from pages(value)
            else:
                yield value

    listed = list(pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]))
    assert sorted(set(listed)) == sorted(listed), f"listed twice: {sorted(p for p in set(listed) if listed.count(p) > 1)}"
    assert all((REPO / "docs" / p).is_file() for p in listed)


def _tour_commands() -> list[str]:
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from run_doc_commands import bash_blocks, commands
    finally:
        sys.path.remove(str(REPO / "tools"))
    return [c for c, _ in commands(_tour_block())]


@pytest.mark.slow
def test_the_tour_runs_in_order_from_a_fresh_directory_and_leaves_a_deployed_model(tmp_path):
    """The tour's story is that the device ends with an adapted model deployed: its commands, as
    written, from an empty directory, with the installed `edge-sel`, each exit 0 and the last
    leaves deployed/ holding a model that scores on the device's shifted digits."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    outputs = []
    for command in _tour_commands():
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        outputs.append(done.stdout)
    assert "promote" in _tour_commands()[-1]
    assert outputs[-1].startswith("promoted (first)")
    deployed = tmp_path / "deployed"
    assert (deployed / "model.safetensors").is_file() and (deployed / "model.json").is_file()
    from edge_sel.demo import output_accuracy
    from edge_sel.engine.runs.data_options import DataOptions
    splits = DataOptions("digits", shard="1/2", shift="corrupt=contrast:4").load()
    shifted, clean = output_accuracy(deployed, (splits.test, splits.test_clean))
    assert shifted > 0.8 and clean > 0.8, (shifted, clean)       # adapted, and nothing forgotten
    # The report the tour writes is there, with the runs it names.
    assert (tmp_path / "report" / "report.html").is_file()
    assert len((tmp_path / "report" / "runs.csv").read_text().splitlines()) == 6


def test_docs_state_what_the_code_does():
    """Sentences a user acts on: the exit status of a stopped run, what the export step needs."""
    crash = " ".join((REPO / "docs" / "crash-safety-and-distributed.md").read_text().split())
    assert "exit 0 with the resume command" not in crash
    assert "exit 130 (SIGINT) or 143 (SIGTERM)" in crash
    models = (REPO / "docs" / "models.md").read_text()
    tour = models[models.index("## Bring your own: a complete example"):]
    before_export = tour[:tour.index("edge-sel export --checkpoint ckpt/tiny")]
    assert "`ort` extra" in before_export
    section = models[models.index("## ONNX export and ORT training"):]
    assert "pip install 'edge-sel[ort]'" in section[:600]
