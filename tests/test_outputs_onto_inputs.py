"""Outputs placed onto inputs, across every command that writes (edge_sel/core/outputs.py): each is
refused in one line with exit 2, before anything is written. Every input lives under one directory
whose every byte (files, links, names) is hashed before and after each case: a refusal that
destroyed, truncated or added anything fails.

Also the regression tests of issue 45's items 4-8 that need a real checkpoint: a good earlier
export kept when the bank turns out torn, predict's --overwrite, promote's place and journal."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from edge_sel.config import TrainConfig
from edge_sel.core.bn_bank import BANK_FILE
from edge_sel.core.outputs import MARKER
from edge_sel.data.sources import load_synthetic
from edge_sel.data.write_folder import write_image_folder
from edge_sel.engine.night import journal
from edge_sel.engine.night.deployed_swap import swap_in
from edge_sel.engine.night.promote import promote
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import finetune
from helpers import needs_ort, run_main, run_main_said

pytestmark = pytest.mark.usefixtures("one_thread")


run = run_main_said      # `edge-sel ARGV` through main(): exit code, stdout, stderr


def tree(root: Path) -> dict:
    """Every entry under `root`: a file's SHA-256, a link's target, a directory's name."""
    found = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(here) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[rel] = "dir"
    return found


def model_run(path: Path, checkpoint: Path, val_acc: float = 0.9) -> Path:
    """A finished fine-tune as promote reads it, whose model is `checkpoint`'s (loadable)."""
    path.mkdir(parents=True)
    for name in ("model.safetensors", "model.json"):
        shutil.copy2(checkpoint / name, path / name)
    (path / "summary.json").write_text(json.dumps({"phase": "finetune", "output_model": {"val_acc": val_acc}}))
    (path / "config.json").write_text(json.dumps({"phase": "finetune", "checkpoint": str(checkpoint)}))
    return path


@pytest.fixture(scope="module")
def world(tiny_warm, tmp_path_factory):
    """Everything the cases read, under one root: a checkpoint, a run, a data set folder, images, a
    device home with a deployed version, and a user's file."""
    root = tmp_path_factory.mktemp("world")
    ck = root / "ckpt"
    shutil.copytree(tiny_warm, ck)
    train, test = load_synthetic(per_class=6)
    write_image_folder(train, root / "data" / "train")
    write_image_folder(test, root / "data" / "test")
    write_image_folder(test, root / "images", limit=1)
    finetune(ck, DataOptions("synthetic", subset=32), TrainConfig(epochs=1, batch_size=32), root / "run", quiet=True)
    home = root / "home"
    (home / "checkpoints").mkdir(parents=True)
    shutil.copytree(ck, home / "checkpoints" / "warmup")
    swap_in(model_run(root / "night-run", ck), home / "checkpoints" / "deployed")
    (root / "notes.txt").write_text("a user's notes\n")
    os.link(root / "notes.txt", root / "notes-link.txt")
    (root / "elsewhere").symlink_to("ckpt")
    return root


def an_image(world: Path) -> Path:
    return next((world / "images").rglob("*.png"))


# (id, argv with {w} for the world's root, what the one line must say)
CASES = [
    ("export-onto-its-checkpoint", "export --checkpoint {w}/ckpt --out {w}/ckpt --overwrite",
     "is --checkpoint {w}/ckpt"),
    ("export-inside-its-checkpoint", "export --checkpoint {w}/ckpt --out {w}/ckpt/onnx", "lies inside --checkpoint"),
    ("export-holding-its-checkpoint", "export --checkpoint {w}/ckpt --out {w} --overwrite", "holds --checkpoint"),
    ("export-through-a-link", "export --checkpoint {w}/ckpt --out {w}/elsewhere --overwrite", "is --checkpoint"),
    ("export-inside-the-deployed-model", "export --checkpoint {w}/home/checkpoints/deployed "
     "--out {w}/home/checkpoints/deployed/onnx", "lies inside --checkpoint"),
    ("export-over-a-users-folder", "export --checkpoint {w}/ckpt --out {w}/data --overwrite",
     "not an earlier output of edge-sel export"),
    ("predict-onto-an-input-image", "predict --checkpoint {w}/ckpt {image} --out {image} --overwrite",
     "is the input"),
    ("predict-onto-a-hard-link-of-an-input", "predict --checkpoint {w}/ckpt {w}/notes-link.txt "
     "--out {w}/notes.txt --overwrite", "is the input"),
    ("predict-onto-its-card", "predict --checkpoint {w}/ckpt {w}/images --out {w}/ckpt/model.json --overwrite",
     "lies inside --checkpoint"),
    ("predict-inside-the-deployed-model", "predict --checkpoint {w}/home/checkpoints/deployed {w}/images "
     "--out {w}/home/checkpoints/deployed/preds.jsonl", "lies inside --checkpoint"),
    ("predict-inside-the-image-folder", "predict --checkpoint {w}/ckpt {w}/images --out {w}/images/preds.jsonl",
     "lies inside the input"),
    ("predict-summary-onto-its-out", "predict --checkpoint {w}/ckpt {w}/images --out {w}/p.jsonl "
     "--summary {w}/p.jsonl", "--summary {w}/p.jsonl: is --out"),
    ("predict-over-a-users-file", "predict --checkpoint {w}/ckpt {w}/images --out {w}/notes.txt",
     "already exists; pass --overwrite"),
    ("predict-into-a-directory", "predict --checkpoint {w}/ckpt {w}/images --out {w}/home", "is a directory"),
    ("finetune-onto-its-checkpoint", "finetune --checkpoint {w}/ckpt --dataset synthetic --epochs 1 "
     "--out {w}/ckpt --overwrite", "is --checkpoint"),
    ("finetune-inside-its-data", "finetune --checkpoint {w}/ckpt --dataset folder:{w}/data --epochs 1 "
     "--out {w}/data/run", "lies inside --dataset"),
    ("finetune-over-an-output-of-another-command", "finetune --checkpoint {w}/ckpt --dataset synthetic --epochs 1 "
     "--out {w}/home/checkpoints/warmup --overwrite",
     "not an earlier output of edge-sel finetune (edge-sel pretrain wrote it)"),
    ("pretrain-onto-its-data", "pretrain --model edgecnn --dataset folder:{w}/data --epochs 1 --out {w}/data "
     "--overwrite", "is --dataset"),
    ("report-onto-its-run", "report {w}/run --out {w}/run --overwrite", "is RUN"),
    ("report-inside-its-run", "report {w}/run --out {w}/run/report", "lies inside RUN"),
    ("shift-inside-its-data", "shift --dataset folder:{w}/data --shift corrupt=fog:1 --out {w}/data/fog",
     "lies inside --dataset"),
    ("trigger-inside-its-checkpoint", "trigger --checkpoint {w}/ckpt --dataset synthetic --budget-frames 4 "
     "--out {w}/ckpt/trigger", "lies inside --checkpoint"),
    ("fleet-app-over-a-users-project", "fleet app --out {w}/data --overwrite",
     "not an earlier output of edge-sel fleet app"),
    ("bench-onto-its-checkpoint", "bench edge --checkpoint {w}/ckpt --dataset synthetic --quick --out {w}/ckpt "
     "--overwrite", "is --checkpoint"),
    ("promote-inside-its-run", "promote {w}/run --deployed {w}/run/deployed --force", "lies inside RUN"),
    ("promote-a-deployed-version-onto-itself", "promote {w}/home/checkpoints/deployed "
     "--deployed {w}/home/checkpoints/deployed --force", "is RUN"),
    ("promote-over-a-users-file", "promote {w}/run --deployed {w}/notes.txt --force", "is not a deployed model"),
    ("promote-over-a-link-elsewhere", "promote {w}/run --deployed {w}/elsewhere --force",
     "not to a version under .elsewhere.versions/"),
    ("promote-over-a-users-folder", "promote {w}/run --deployed {w}/images --force", "holds no model"),
    ("night-runs-inside-the-deployed-model", "night --home {w}/home --dataset synthetic --profile generic --quiet "
     "--runs {w}/home/checkpoints/deployed/runs", "lies inside --home/deployed"),
    ("night-runs-inside-the-warmup", "night --home {w}/home --dataset synthetic --profile generic --quiet "
     "--runs {w}/home/checkpoints/warmup", "lies inside --home/warmup"),
]


@pytest.mark.parametrize("argv, said", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_an_output_onto_an_input_is_refused_in_one_line_and_nothing_changes(world, capsys, monkeypatch, argv, said):
    monkeypatch.delenv("EDGE_SEL_HOME", raising=False)
    image = an_image(world)
    args = [a.format(w=world, image=image) for a in argv.split()]
    before = tree(world)
    code, err = run_main(args, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert said.format(w=world) in err, err
    assert tree(world) == before


def test_the_set_is_at_least_fifteen_cases_over_ten_commands():
    assert len(CASES) >= 15 and len({c[1].split()[0] for c in CASES}) >= 10


# ---- item 4: export --overwrite -------------------------------------------------------------

@needs_ort
def test_export_overwrite_replaces_only_its_own_and_keeps_a_good_export_when_the_bank_is_torn(world, tmp_path,
                                                                                              capsys):
    """Issue 45, item 4: `export --overwrite` deleted a good earlier export before finding the
    bank torn."""
    out = tmp_path / "export"
    code, err = run_main(["export", "--checkpoint", world / "ckpt", "--out", out, "--scheme", "classifier",
                          "--quiet"], capsys)
    assert code == 0, err
    assert (out / MARKER).read_text() == "edge-sel export\n" and (out / "manifest.json").is_file()
    good = tree(out)
    torn = tmp_path / "torn"
    shutil.copytree(world / "ckpt", torn)
    (torn / BANK_FILE).write_bytes(b"\0" * 40)
    code, err = run_main(["export", "--checkpoint", torn, "--out", out, "--overwrite", "--scheme", "classifier",
                          "--quiet"], capsys)
    assert code == 2 and BANK_FILE in err and len(err.strip().splitlines()) == 1, err
    assert tree(out) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "torn"]      # no staging left behind
    (torn / BANK_FILE).unlink()
    code, err = run_main(["export", "--checkpoint", torn, "--out", out, "--overwrite", "--scheme", "classifier",
                          "--quiet"], capsys)
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["checkpoint"]["path"] == str(torn)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "torn"]


# ---- item 5: predict --overwrite --------------------------------------------------------------

def test_predict_replaces_an_existing_out_only_with_overwrite(world, tmp_path, capsys):
    """Issue 45, item 5: `predict --out` overwrote any file; it had no --overwrite."""
    out = tmp_path / "preds.jsonl"
    out.write_text("earlier\n")
    code, err = run_main(["predict", "--checkpoint", world / "ckpt", world / "images", "--out", out, "--quiet"],
                         capsys)
    assert code == 2 and err.strip() == (f"edge-sel: error: --out {out}: already exists; pass --overwrite to "
                                         f"replace it") and out.read_text() == "earlier\n"
    code, err = run_main(["predict", "--checkpoint", world / "ckpt", world / "images", "--out", out, "--overwrite",
                          "--quiet"], capsys)
    assert code == 0, err
    lines = out.read_text().splitlines()
    assert len(lines) == len(list((world / "images").rglob("*.png"))) and json.loads(lines[0])["path"]


# ---- items 6-8: promote's place and journal --------------------------------------------------

def test_promote_force_onto_a_users_file_keeps_it(world, tmp_path, capsys):
    """Issue 45, item 6: "promoted (first)", the file replaced by a link, its content gone."""
    users = tmp_path / "deployed"
    users.write_text("my own file\n")
    code, err = run_main(["promote", world / "run", "--deployed", users, "--force"], capsys)
    assert code == 2 and err.strip() == (f"edge-sel: error: --deployed {users}: exists and is not a deployed model "
                                         f"(a file, not a directory or a link to a version); promote never "
                                         f"replaces it")
    assert users.read_text() == "my own file\n" and sorted(os.listdir(tmp_path)) == ["deployed"]


def evaluated(acc):
    return lambda config, deployed, run_dir: (acc, None, {"samples": 1, "flops": 0, "wall_s": 0.0})


def test_promote_keeps_a_journal_says_already_deployed_plainly_and_rolls_back(world, tmp_path, capsys):
    """Issue 45, item 8: promoting the deployed run said "started from X, not from X" and rewrote
    its promote.json; the record of that deployment was lost. Now every decision and deployment is
    a journal line never rewritten (the deployed model's and the run's own), `deployed history` shows them, and `deployed roll-back` deploys
    the version before again."""
    deployed = tmp_path / "checkpoints" / "deployed"
    first = model_run(tmp_path / "runs" / "first", world / "ckpt")
    assert promote(first, deployed).rule == "first"
    v1 = deployed.resolve()
    second = model_run(tmp_path / "runs" / "second", world / "ckpt", val_acc=0.95)
    (second / "model.json").write_text((second / "model.json").read_text().replace("{", '{"note": "second", ', 1))
    config = json.loads((second / "config.json").read_text())
    (second / "config.json").write_text(json.dumps({**config, "checkpoint": str(deployed)}))
    assert promote(second, deployed, force=True, evaluate=evaluated(0.9)).rule == "better"
    v2 = deployed.resolve()
    record, lines = journal.run_path(second).read_bytes(), journal.journal_path(deployed).read_bytes()

    code, out, err = run(["promote", second, "--deployed", deployed], capsys)
    assert (code, err) == (0, "")
    assert out == f"already deployed: {second}: its model is the one deployed now ({v2.name}); nothing to do\n"
    assert journal.run_path(second).read_bytes() == record and journal.journal_path(deployed).read_bytes() == lines
    events = [(line["event"], Path(line.get("run", "")).name) for line in journal.read(deployed)]
    assert events == [("decision", "first"), ("deployed", "first"), ("decision", "second"), ("deployed", "second")]

    code, out, err = run(["deployed", "history", "--deployed", deployed], capsys)
    assert code == 0, err
    shown = out.splitlines()
    assert shown[0] == f"serving now: {v2.name}; before it: {v1.name} (kept)" and len(shown) == 5
    assert shown[1].endswith(f"deployed {v2.name} from {second} (better), after {v1.name}")
    assert shown[2].endswith(f"promoted (better): {second}: validation accuracy 95.00% beats the deployed model's "
                             f"90.00%")
    assert shown[4].endswith(f"promoted (first): {first}: deployed: nothing was deployed before, so this run's model is the first")
    code, out, err = run(["deployed", "roll-back", "--deployed", deployed], capsys)
    assert code == 0, err
    assert out == f"rolled back: {deployed} -> {v1.name} (was {v2.name})\n"
    assert deployed.resolve() == v1 and v2.is_dir()
    last = journal.read(deployed)[-1]
    assert (last["event"], last["version"], last["previous"], last["by"]) == ("rolled-back", str(v1), str(v2), "user")
    code, err = run_main(["deployed", "roll-back", "--deployed", deployed, "--to", "nowhere"], capsys)
    assert code == 2 and "--to nowhere: not a version kept" in err and deployed.resolve() == v1


def test_a_migrated_plain_directory_is_the_version_before_and_rolls_back_by_a_relative_path(world, tmp_path, capsys,
                                                                                            monkeypatch):
    """Issue [hardening], item 7: once a plain deployed directory was migrated, `deployed roll-back`
    without --to failed with "--to V: already the deployed version" (a relative --deployed named its
    versions relative, so the deployed one was taken for another), and the history said "after the
    warmup" where the old directory is kept as the version before."""
    monkeypatch.chdir(tmp_path)
    deployed = Path("checkpoints") / "deployed"
    deployed.mkdir(parents=True)
    for name in ("model.safetensors", "model.json"):
        shutil.copy2(world / "ckpt" / name, deployed / name)
    night = model_run(tmp_path / "runs" / "night", world / "ckpt")
    (night / "model.json").write_text((night / "model.json").read_text().replace("{", '{"note": "night", ', 1))
    assert promote(night, deployed, force=True, evaluate=evaluated(0.5)).rule == "better"
    new = deployed.resolve()
    old = new.with_name(new.name + ".migrated-from-plain")
    assert journal.read(deployed)[-1]["previous"] == str(old.relative_to(tmp_path))
    code, out, err = run(["deployed", "history", "--deployed", deployed], capsys)
    assert code == 0, err
    shown = out.splitlines()
    assert shown[0] == f"serving now: {new.name}; before it: {old.name} (kept)"
    assert shown[1].endswith(f"deployed {new.name} from {night} (better), after {old.name}")
    code, out, err = run(["deployed", "roll-back", "--deployed", deployed], capsys)
    assert (code, err) == (0, "")
    assert out == f"rolled back: {deployed} -> {old.name} (was {new.name})\n"
    assert deployed.resolve() == old
