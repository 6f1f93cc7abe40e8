"""More crafted inputs, through the command a device runs on them: links and hard links in a
checkpoint, a run, a fleet run and a deployed place; JSON nested past the parser or larger than
edge-sel reads; files that are not files; an output another command is writing. Each is refused in
one line (exit 2, or 1 where a write is refused) or handled (exit 0), and every input, and every file
outside the inputs that a crafted link names, is byte-identical afterwards, with nothing of the
outside secret in any message.

Most are refused before a model or data loads; the inputs are a tiny checkpoint (an EdgeCNN four
channels wide on the digits' 1 x 8 x 8 images, not trained), two frames, and a run's files written
by hand (promote, report and resume read them before anything else)."""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import run_main
from edge_sel import errors
from edge_sel.core.checkpoint import ModelCard, save_checkpoint
from edge_sel.models import EdgeCNN
from edge_sel.models.spec import TRUST_ENV, ModelSpec

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE, WIDTHS = [1, 8, 8], [4, 4, 4, 4]
SECRET = b"SECRET-OUTSIDE-BYTES-0123456789"
FINETUNE = ["--dataset", "digits", "--shard", "1/2", "--subset", "64", "--epochs", "1", "--quiet", "--batch-size", "32"]
NESTED = b"[" * 100_000


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    card = ModelCard("edgecnn", 10, [str(i) for i in range(10)], SHAPE, [0.3], [0.4],
                     model=ModelSpec("edgecnn", {"widths": WIDTHS}).to_json())
    save_checkpoint(root / "ckpt", EdgeCNN(10, 1, WIDTHS), card)
    (root / "frames").mkdir()
    for i in range(2):
        Image.new("L", (8, 8), 40 * i).save(root / "frames" / f"{i}.png")
    run = root / "run"                   # what promote, report and resume read first
    shutil.copytree(root / "ckpt", run)
    (run / "config.json").write_text(json.dumps({"phase": "finetune", "checkpoint": str(root / "ckpt")}))
    (run / "summary.json").write_text(json.dumps({"output_model": {"val_acc": 0.5}, "stop_reason": "completed"}))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "val_acc": 0.5}) + "\n")
    (root / "fleet").mkdir()
    (root / "fleet" / "config.json").write_text(json.dumps({"phase": "fleet"}))
    return root


def tree_digest(root: Path) -> dict:
    """Every file's bytes and every link's target under `root`, links not followed; outputs (names
    starting `out`) left out."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            if p.relative_to(root).parts[0].startswith(("out", ".out")):
                continue
            if p.is_symlink():
                found[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                found[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def link_out(path: Path, o: Path, content: bytes | None = None) -> None:
    """`path` replaced by a link to a file outside (the secret, or `content` under the same name)."""
    target = o / "secret.bin"
    if content is not None:
        target = o / path.name
        target.write_bytes(content)
    path.unlink(missing_ok=True)
    path.symlink_to(target)


def predict(t):
    return ["predict", "--checkpoint", t / "ckpt", t / "frames", "--out", t / "out.jsonl"]


def finetune(t):
    return ["finetune", "--checkpoint", t / "ckpt", "--out", t / "outrun", *FINETUNE]


def export(t):
    return ["export", "--checkpoint", t / "ckpt", "--out", t / "outart", "--scheme", "classifier"]


def promote(t):
    return ["promote", t / "run", "--deployed", t / "outdeployed"]


LINK = "a link; edge-sel follows no link"


def case(name, code, words, needs=None):
    """A crafted input: `craft(t, o, mp)` changes the inputs under t (o: a folder outside them),
    returns the command's argv; the command must exit `code` saying `words` (one line), or 0.
    `needs`: a package the command needs before it reads the input (skipped without it)."""
    def wrap(craft):
        craft.name, craft.code, craft.words, craft.needs = name, code, words, needs
        return craft
    return wrap


def missing(package: str | None) -> bool:
    if package is None:
        return False
    try:
        return importlib.util.find_spec(package) is None
    except ImportError:
        return True


CASES = [
    case("card_linked_out", 2, LINK)(lambda t, o, mp: (link_out(t / "ckpt/model.json", o,
                                                                 (t / "ckpt/model.json").read_bytes()), predict(t))[1]),
    case("card_linked_within", 2, LINK)(lambda t, o, mp: (
        shutil.copy(t / "ckpt/model.json", t / "ckpt/card.json"), (t / "ckpt/model.json").unlink(),
        (t / "ckpt/model.json").symlink_to("card.json"), predict(t))[-1]),
    case("weights_linked_out-predict", 2, LINK)(lambda t, o, mp: (
        link_out(t / "ckpt/model.safetensors", o, (t / "ckpt/model.safetensors").read_bytes()), predict(t))[1]),
    case("weights_linked_out-export", 2, LINK)(lambda t, o, mp: (link_out(t / "ckpt/model.safetensors", o),
                                                                  export(t))[1]),
    case("weights_linked_out-finetune", 2, LINK)(lambda t, o, mp: (link_out(t / "ckpt/model.safetensors", o),
                                                                    finetune(t))[1]),
    case("anchors_linked_out", 2, LINK)(lambda t, o, mp: (
        [(t / "ckpt" / n).write_bytes(b"") for n in ("fisher.safetensors", "source.safetensors")],
        link_out(t / "ckpt/anchors.safetensors", o), finetune(t))[-1]),
    case("bank_linked_out", 2, LINK)(lambda t, o, mp: (link_out(t / "ckpt/bn_bank.safetensors", o), predict(t))[1]),
    case("card_a_link_loop", 2, LINK)(lambda t, o, mp: ((t / "ckpt/model.json").unlink(),
                                                         (t / "ckpt/model.json").symlink_to("model.json"),
                                                         predict(t))[-1]),
    case("weights_a_dangling_link", 2, LINK)(lambda t, o, mp: ((t / "ckpt/model.safetensors").unlink(),
                                                                (t / "ckpt/model.safetensors").symlink_to(o / "gone"),
                                                                predict(t))[-1]),
    case("card_a_directory", 2, "model.json is missing")(lambda t, o, mp: (
        (t / "ckpt/model.json").unlink(), (t / "ckpt/model.json").mkdir(), predict(t))[-1]),
    case("card_a_fifo", 2, "model.json is missing")(lambda t, o, mp: (
        (t / "ckpt/model.json").unlink(), os.mkfifo(t / "ckpt/model.json"), predict(t))[-1]),
    case("weights_hard_linked_from_outside", 0, "")(lambda t, o, mp: (
        shutil.copy(t / "ckpt/model.safetensors", o / "weights"), (t / "ckpt/model.safetensors").unlink(),
        os.link(o / "weights", t / "ckpt/model.safetensors"), predict(t))[-1]),
    case("checkpoint_named_through_a_link", 0, "")(lambda t, o, mp: (
        (t / "cklink").symlink_to(t / "ckpt"), ["predict", "--checkpoint", t / "cklink", t / "frames",
                                                 "--out", t / "out.jsonl"])[1]),
    case("card_nested_arrays", 2, "nested too deeply")(lambda t, o, mp: (
        (t / "ckpt/model.json").write_bytes(NESTED), predict(t))[1]),
    case("card_nested_objects", 2, "nested too deeply")(lambda t, o, mp: (
        (t / "ckpt/model.json").write_bytes(b'{"a":' * 100_000), finetune(t))[1]),
    case("card_larger_than_the_limit", 2, "more than the 4,096")(lambda t, o, mp: (
        mp.setattr(errors, "JSON_LIMIT", 4096), (t / "ckpt/model.json").write_bytes(b" " * 5000 + b"{}"),
        predict(t))[-1]),
    case("card_not_utf8", 2, "unreadable")(lambda t, o, mp: ((t / "ckpt/model.json").write_bytes(b"{\xff\xfe}"),
                                                              predict(t))[1]),
    case("card_infinite_mean", 2, "normalization")(lambda t, o, mp: (
        (t / "ckpt/model.json").write_text((t / "ckpt/model.json").read_text().replace("0.3", "1e999")),
        predict(t))[1]),
    case("resume_config_nested", 2, "nested too deeply")(lambda t, o, mp: (
        (t / "run/config.json").write_bytes(NESTED), ["finetune", "--resume", t / "run", "--quiet"])[1]),
    case("resume_config_linked_out", 2, LINK)(lambda t, o, mp: (link_out(t / "run/config.json", o),
                                                                 ["finetune", "--resume", t / "run", "--quiet"])[1]),
    case("promote_summary_linked_out", 2, LINK)(lambda t, o, mp: (link_out(t / "run/summary.json", o), promote(t))[1]),
    case("promote_summary_nested", 2, "JSONDecodeError")(lambda t, o, mp: ((t / "run/summary.json").write_bytes(NESTED),
                                                                            promote(t))[1]),
    case("promote_weights_linked_out", 2, LINK)(lambda t, o, mp: (link_out(t / "run/model.safetensors", o),
                                                                   promote(t))[1]),
    case("promote_run_journal_linked_to_a_victim", 0, "")(lambda t, o, mp: (
        (o / "victim.txt").write_text("the user's\n"), (t / "run/promote.jsonl").symlink_to(o / "victim.txt"),
        promote(t))[-1]),
    case("promote_history_linked_to_a_victim", 1, "appends through no link")(lambda t, o, mp: (
        (o / "victim.txt").write_text("the user's\n"), (t / "outdeployed.history.jsonl").symlink_to(o / "victim.txt"),
        promote(t))[-1]),
    case("report_records_linked_out", 2, LINK)(lambda t, o, mp: (link_out(t / "run/metrics.jsonl", o),
                                                                  ["report", t / "run", "--out", t / "outreport"])[1]),
    case("fleet_config_nested", 2, "nested too deeply", needs="flwr")(lambda t, o, mp: (
        (t / "fleet/config.json").write_bytes(NESTED), ["fleet", "simulate", "--resume", "--out", t / "fleet", "--dataset", "digits"])[1]),
    case("fleet_config_linked_out", 2, LINK, needs="flwr")(lambda t, o, mp: (
        link_out(t / "fleet/config.json", o), ["fleet", "simulate", "--resume", "--out", t / "fleet", "--dataset", "digits"])[1]),
    case("profile_nested", 2, "nested too deeply")(lambda t, o, mp: (
        (t / "deep.toml").write_bytes(b"a = " + NESTED[:50_000] + b"]" * 50_000),
        [*finetune(t), "--profile", t / "deep.toml"])[1]),
    case("stages_nested", 2, "nested too deeply")(lambda t, o, mp: (
        (t / "stages.json").write_bytes(NESTED), [*finetune(t), "--strategy", "sel", "--stages", t / "stages.json"])[1]),
    case("trusted_list_nested", 2, "nested too deeply")(lambda t, o, mp: (
        (t / "trusted.json").write_bytes(NESTED), mp.setenv("EDGE_SEL_TRUST_FILE", str(t / "trusted.json")),
        (t / "net.py").write_text("def build(num_classes, in_channels=1):\n    raise SystemExit('ran')\n"),
        (t / "ckpt/model.json").write_text((t / "ckpt/model.json").read_text().replace(
            '"name": "edgecnn"', f'"name": "{t / "net.py"}:build", "kind": "file", "file_sha256": "{"0" * 64}"')),
        predict(t))[-1]),
    case("export_manifest_nested", 2, "nested too deeply")(lambda t, o, mp: (
        (t / "art").mkdir(), (t / "art/manifest.json").write_bytes(NESTED),
        ["predict", "--checkpoint", t / "art", "--backend", "ort", t / "frames", "--out", t / "out.jsonl"])[-1]),
]


@pytest.mark.parametrize("craft", [
    pytest.param(c, id=c.name, marks=pytest.mark.skipif(missing(c.needs), reason=f"{c.needs} is not installed "
                                                        "(edge-sel fleet says so before it reads its input)"))
    for c in CASES])
def test_a_hostile_input_is_refused_in_one_line_or_handled_and_every_input_is_unchanged(
        base, tmp_path, capsys, monkeypatch, craft):
    monkeypatch.setenv(TRUST_ENV, "0")
    monkeypatch.setenv("EDGE_SEL_TRUST_FILE", str(tmp_path / "no-trusted-files.json"))
    for name in ("ckpt", "frames", "run", "fleet"):
        shutil.copytree(base / name, tmp_path / name, symlinks=True)
    o = tmp_path.parent / f"{tmp_path.name}-outside"
    o.mkdir()
    (o / "secret.bin").write_bytes(SECRET * 64)
    argv = craft(tmp_path, o, monkeypatch)
    before = tree_digest(tmp_path), tree_digest(o)
    code, err = run_main(argv, capsys)
    assert code == craft.code, err
    if craft.code:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and craft.words in err, err
    assert (tree_digest(tmp_path), tree_digest(o)) == before
    assert SECRET.decode() not in err


def _card_widened(run: Path) -> None:
    card = json.loads((run / "model.json").read_text())
    card["model"]["kwargs"]["widths"] = [8, 8, 8, 8]
    (run / "model.json").write_text(json.dumps(card))


@pytest.mark.parametrize("craft, deployed_before, words", [
    ("nested", False, "nested too deeply"), ("nested", True, "nested too deeply"),
    ("wider", False, "does not match architecture")])
def test_promote_deploys_no_model_it_cannot_load_first_deployment_included(base, tmp_path, capsys, craft,
                                                                          deployed_before, words):
    """A card nested 200,000 deep was deployed as the first model (exit 0; predict then failed on
    it) and gave a RecursionError traceback against a deployed model; a card naming a model the
    weights do not fit was deployed too."""
    run, deployed = tmp_path / "run", tmp_path / "deployed"
    shutil.copytree(base / "run", run)
    if deployed_before:
        shutil.copytree(base / "ckpt", deployed)
        (run / "config.json").write_text(json.dumps({"phase": "finetune", "checkpoint": str(deployed)}))
    if craft == "nested":
        (run / "model.json").write_bytes(b"[" * 200_000)
    else:
        _card_widened(run)
    before = tree_digest(tmp_path)
    code, err = run_main(["promote", run, "--deployed", deployed], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err and words in err, err
    assert tree_digest(tmp_path) == before          # nothing deployed, no history, no record in the run


def test_an_output_another_command_is_writing_is_refused_even_with_overwrite(base, tmp_path, capsys):
    """A fine-tune naming the --out of a run still writing it (another process): refused before a
    byte is written, the other run's files untouched."""
    out, ready, go_on = tmp_path / "outrun", tmp_path / "ready", tmp_path / "go-on"
    script = ("import sys, time\nfrom pathlib import Path\nfrom edge_sel.core.outputs import start_out_dir\n"
              "out, ready, go_on = map(Path, sys.argv[1:])\nstart_out_dir(out, 'finetune')\n"
              "(out / 'metrics.jsonl').write_text('{}\\n')\nready.touch()\n"
              "while not go_on.exists():\n    time.sleep(0.02)\n")
    other = subprocess.Popen([sys.executable, "-c", script, str(out), str(ready), str(go_on)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and other.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        code, err = run_main(["finetune", "--checkpoint", base / "ckpt", "--out", out, "--overwrite", *FINETUNE],
                             capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "another edge-sel command is writing it now" in err
        assert (out / "metrics.jsonl").read_text() == "{}\n"
    finally:
        go_on.touch()
        other.wait(60)


@pytest.mark.parametrize("option", ["--out", "--summary"])
def test_a_file_output_another_command_is_writing_is_refused(base, tmp_path, capsys, option):
    """Issue [hardening], item 9: only directory outputs were claimed; predict's --out and --summary
    files now take the same claim (`.NAME.claim` held while written), and a predict naming a file
    another command holds is refused before a byte is written. The claim goes with the command."""
    from edge_sel.core import lock_file
    target = tmp_path / "written.json"
    other = [option, target] if option == "--out" else ["--out", tmp_path / "out.jsonl", option, target]
    argv = ["predict", "--checkpoint", base / "ckpt", base / "frames", *other, "--quiet"]
    held = lock_file.acquire(str(tmp_path / ".written.json.claim"), wait=False)
    try:
        code, err = run_main(argv, capsys)
    finally:
        lock_file.release(str(tmp_path / ".written.json.claim"), held)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{option} {target}: another edge-sel command is writing it now" in err and not target.exists()
    code, err = run_main(argv, capsys)
    assert code == 0 and target.is_file(), err
    assert not list(tmp_path.glob(".*.claim"))         # released at the command's end


def test_the_hostile_set_is_a_set():
    assert len({c.name for c in CASES}) == len(CASES) >= 30
