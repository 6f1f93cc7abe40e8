"""Received directories crafted to run code or to read files outside them: checkpoints whose card
names code, exports whose graphs or JSON name files elsewhere. Each goes through the command a
device runs on it (`edge-sel predict`, `finetune`, `export`) and must be refused in one line with
exit 2, with no code run (the crafted code would write a marker file), nothing from outside in any
output or message, and every input byte-identical afterwards.

One tiny checkpoint (an EdgeCNN four channels wide on the digits' 1 x 8 x 8 images, not trained)
and one real export of it are made per module; each case crafts a copy."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import run_cli, run_main, with_external_data
from edge_sel.core.checkpoint import ModelCard, save_checkpoint
from edge_sel.models import EdgeCNN
from edge_sel.models import spec as spec_mod
from edge_sel.models.spec import TRUST_ENV, ModelSpec
from edge_sel.models.trusted_files import remember

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = [1, 8, 8]
WIDTHS = [4, 4, 4, 4]
SECRET = b"SECRET-OUTSIDE-BYTES-0123456789"
FINETUNE = ["--dataset", "digits", "--shard", "1/2", "--epochs", "1", "--quiet", "--batch-size", "64"]


def build(num_classes, in_channels=1, **kwargs):
    return EdgeCNN(num_classes, in_channels, WIDTHS)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The untouched inputs every case copies: a checkpoint, its export and two frames."""
    root = tmp_path_factory.mktemp("adversarial")
    torch.manual_seed(0)
    card = ModelCard("edgecnn", 10, [str(i) for i in range(10)], SHAPE, [0.3], [0.4],
                     model=ModelSpec("edgecnn", {"widths": WIDTHS}).to_json())
    save_checkpoint(root / "ckpt", EdgeCNN(10, 1, WIDTHS), card)
    pytest.importorskip("onnxruntime")
    run_cli("export", "--checkpoint", root / "ckpt", "--out", root / "export", "--scheme", "classifier", "--quiet")
    (root / "frames").mkdir()
    for i in range(2):
        Image.new("L", (8, 8), 40 * i).save(root / "frames" / f"{i}.png")
    return root


def tree_digest(*roots: Path) -> dict:
    """Every file's bytes and every link's target under `roots`, links not followed."""
    out = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                p = Path(folder) / name
                if p.is_symlink():
                    out[str(p)] = "link:" + os.readlink(p)
                elif p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def outside(where: Path) -> Path:
    """A folder beside the received one, holding what a crafted file reaches for: a secret, code."""
    o = where / "outside"
    o.mkdir()
    (o / "secret.bin").write_bytes(SECRET * 64)
    return o


def code_that_marks(marker: Path) -> str:
    return (f"open({str(marker)!r}, 'w').write('code ran')\n"
            "from edge_sel.models import EdgeCNN\n\n"
            "def build(num_classes, in_channels=1, **kwargs):\n"
            "    return EdgeCNN(num_classes, in_channels, [4, 4, 4, 4])\n")


def set_card_model(ckpt: Path, model: dict) -> None:
    card = json.loads((ckpt / "model.json").read_text())
    card["model"] = model
    (ckpt / "model.json").write_text(json.dumps(card))


def file_model(path, attr="build", digest=None, kwargs=None) -> dict:
    return {"name": f"{path}:{attr}", "kind": "file", "kwargs": kwargs or {},
            **({"file_sha256": digest} if digest else {})}


def shipped_helper(ck: Path, marker: Path) -> Path:
    helper = ck / "helper.py"
    helper.write_text(code_that_marks(marker))
    return helper


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- crafted checkpoints: each returns (the received directory, the command's argv, words the line says)

def helper_with_its_own_digest(command):
    def craft(ck, o, marker, tmp):
        helper = shipped_helper(ck, marker)
        set_card_model(ck, file_model(helper, digest=sha(helper)))
        return command(ck, tmp), "not named on this machine"
    return craft


def predict_torch(ck, tmp):
    return ["predict", "--checkpoint", ck, tmp / "frames", "--out", tmp / "preds.jsonl"]


def finetune(ck, tmp):
    return ["finetune", "--checkpoint", ck, "--out", tmp / "run", *FINETUNE]


def export(ck, tmp):
    return ["export", "--checkpoint", ck, "--out", tmp / "art", "--scheme", "classifier"]


def helper_by_relative_path(ck, o, marker, tmp):
    helper = shipped_helper(ck, marker)
    os.chdir(ck)        # a relative path read against the working directory would find it
    set_card_model(ck, file_model("helper.py", digest=sha(helper)))
    return predict_torch(ck, tmp), "not an absolute path"


def helper_by_dotdot_path(ck, o, marker, tmp):
    helper = shipped_helper(ck, marker)
    os.chdir(o)
    set_card_model(ck, file_model(f"../{ck.name}/helper.py", digest=sha(helper)))
    return finetune(ck, tmp), "not an absolute path"


def helper_without_a_digest(ck, o, marker, tmp):
    set_card_model(ck, file_model(shipped_helper(ck, marker)))
    return predict_torch(ck, tmp), "not named on this machine"


def trusted_file(o: Path, marker: Path) -> Path:
    """A model file this machine's user trusts (a pretrain recorded it), with a hub repository beside
    it whose hubconf.py would write the marker: the gadget a dotted name reaches."""
    mine = o / "mine.py"
    mine.write_text("import torch\nfrom torch.hub import load as hub_load\nfrom edge_sel.models import EdgeCNN\n\n"
                    "def build(num_classes, in_channels=1, **kwargs):\n"
                    "    return EdgeCNN(num_classes, in_channels, [4, 4, 4, 4])\n")
    remember(str(mine), sha(mine))
    (o / "repo").mkdir()
    (o / "repo" / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    return mine


def dotted_walk_from_a_trusted_file(ck, o, marker, tmp):
    mine = trusted_file(o, marker)
    set_card_model(ck, file_model(mine, "torch.hub.load", sha(mine),
                                  {"repo_or_dir": str(o / "repo"), "model": "m", "source": "local"}))
    return predict_torch(ck, tmp), "is not a plain name"


def imported_callable_of_a_trusted_file(ck, o, marker, tmp):
    mine = trusted_file(o, marker)
    set_card_model(ck, file_model(mine, "hub_load", sha(mine),
                                  {"repo_or_dir": str(o / "repo"), "model": "m", "source": "local"}))
    return finetune(ck, tmp), "not a function or class defined in mine.py"


def trusted_file_through_a_link_in_the_checkpoint(ck, o, marker, tmp):
    mine = trusted_file(o, marker)
    (ck / "mine.py").symlink_to(mine)
    set_card_model(ck, file_model(ck / "mine.py", digest=sha(mine)))
    return export(ck, tmp), "not named on this machine"


def import_spec(ck, o, marker, tmp):
    trusted_file(o, marker)
    set_card_model(ck, {"name": "torch.hub:load", "kind": "import",
                        "kwargs": {"repo_or_dir": str(o / "repo"), "model": "m", "source": "local"}})
    return predict_torch(ck, tmp), "--trust-model-code"


# -- crafted exports

def predict_ort(art, tmp):
    return ["predict", "--checkpoint", art, "--backend", "ort", tmp / "frames", "--out", tmp / "preds.jsonl"]


def rewrite_manifest(art: Path, change) -> None:
    m = json.loads((art / "manifest.json").read_text())
    change(m)
    (art / "manifest.json").write_text(json.dumps(m))


def restamp(art: Path) -> None:
    """The manifest's digest of model.onnx rewritten to match the crafted graph."""
    rewrite_manifest(art, lambda m: m["inference_model"].update(sha256=sha(art / "model.onnx")))


def external_data_outside(art, o, marker, tmp):
    with_external_data(art / "model.onnx", "../outside/secret.bin")
    restamp(art)
    return predict_ort(art, tmp), "keeps its data in another file"


def external_data_absolute(art, o, marker, tmp):
    with_external_data(art / "model.onnx", str(o / "secret.bin"))
    restamp(art)
    return predict_ort(art, tmp), "keeps its data in another file"


def external_data_inside(art, o, marker, tmp):
    shutil.copy(o / "secret.bin", art / "weights.bin")
    with_external_data(art / "model.onnx", "weights.bin")
    restamp(art)
    return predict_ort(art, tmp), "keeps its data in another file"


def external_data_in_a_constant(art, o, marker, tmp):
    with_external_data(art / "model.onnx", "../outside/secret.bin", constant=True)
    restamp(art)
    return predict_ort(art, tmp), "keeps its data in another file"


def graph_linked_from_outside(art, o, marker, tmp):
    shutil.move(art / "model.onnx", o / "model.onnx")
    (art / "model.onnx").symlink_to(o / "model.onnx")
    return predict_ort(art, tmp), "lies outside"


def manifest_linked_from_outside(art, o, marker, tmp):
    shutil.move(art / "manifest.json", o / "manifest.json")
    (art / "manifest.json").symlink_to(o / "manifest.json")
    return predict_ort(art, tmp), "lies outside"


def conditions_naming(files):
    def craft(art, o, marker, tmp):
        shutil.copy(art / "model.onnx", o / "model.onnx")
        named = [str(o / "model.onnx") if f == "ABSOLUTE" else f for f in files]
        (art / "conditions.json").write_text(json.dumps({"chooser": {"names": ["source"] * len(named)},
                                                         "files": named}))
        return predict_ort(art, tmp), "conditions.json"
    return craft


def conditions_linked_from_outside(art, o, marker, tmp):
    (o / "conditions.json").write_text(json.dumps({"chooser": {"names": ["source"]}, "files": ["model.onnx"]}))
    (art / "conditions.json").symlink_to(o / "conditions.json")
    return predict_ort(art, tmp), "lies outside"


def finetune_ort(art, tmp):
    return ["finetune", "--checkpoint", tmp / "ckpt", "--backend", "ort", "--artifacts", art, "--out", tmp / "run",
            *FINETUNE]


def training_graph_with_external_data(art, o, marker, tmp):
    graph = art / "classifier" / "training_model.onnx"
    with_external_data(graph, "../../outside/secret.bin")
    rewrite_manifest(art, lambda m: m["schemes"]["classifier"]["files"].update({"training_model.onnx": sha(graph)}))
    return finetune_ort(art, tmp), "keeps its data in another file"


def scheme_directory_outside(art, o, marker, tmp):
    shutil.copytree(art / "classifier", o / "classifier")
    rewrite_manifest(art, lambda m: m["schemes"]["classifier"].update(dir="../outside/classifier"))
    return finetune_ort(art, tmp), "lies outside"


def scheme_directory_not_a_string(art, o, marker, tmp):
    rewrite_manifest(art, lambda m: m["schemes"]["classifier"].update(dir=["classifier"]))
    return finetune_ort(art, tmp), "expected the name of a file"


CHECKPOINTS = [helper_with_its_own_digest(predict_torch), helper_with_its_own_digest(finetune),
               helper_with_its_own_digest(export), helper_by_relative_path, helper_by_dotdot_path,
               helper_without_a_digest, dotted_walk_from_a_trusted_file, imported_callable_of_a_trusted_file,
               trusted_file_through_a_link_in_the_checkpoint, import_spec]
EXPORTS = [external_data_outside, external_data_absolute, external_data_inside, external_data_in_a_constant,
           graph_linked_from_outside, manifest_linked_from_outside, conditions_naming(["../outside/model.onnx"]),
           conditions_naming(["ABSOLUTE"]), conditions_naming([5]), conditions_linked_from_outside,
           training_graph_with_external_data, scheme_directory_outside, scheme_directory_not_a_string]
NAMES = ["helper_with_its_own_digest-predict", "helper_with_its_own_digest-finetune",
         "helper_with_its_own_digest-export"] + [c.__name__ for c in CHECKPOINTS[3:]] + \
    [c.__name__ for c in EXPORTS[:6]] + ["conditions_dotdot", "conditions_absolute", "conditions_not_a_string"] + \
    [c.__name__ for c in EXPORTS[9:]]


@pytest.mark.parametrize("craft", CHECKPOINTS + EXPORTS, ids=NAMES)
def test_a_crafted_received_directory_is_refused_in_one_line_running_and_reading_nothing(
        base, tmp_path, capsys, monkeypatch, craft):
    monkeypatch.setenv(TRUST_ENV, "0")         # and back to as it was after the test, whatever the CLI set
    monkeypatch.setattr(spec_mod, "_CHOSEN", set())     # a fresh process: nothing named in this one
    monkeypatch.chdir(tmp_path)
    for name in ("ckpt", "export", "frames"):
        shutil.copytree(base / name, tmp_path / name, symlinks=True)
    received = tmp_path / ("ckpt" if craft in CHECKPOINTS else "export")
    o, marker = outside(tmp_path), tmp_path / "ran"
    argv, words = craft(received, o, marker, tmp_path)
    inputs = [tmp_path / "ckpt", tmp_path / "export", tmp_path / "frames", o]
    before = tree_digest(*inputs)
    code, err = run_main(argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and words in err, err
    assert not marker.exists()
    assert tree_digest(*inputs) == before
    assert SECRET.decode() not in err
    for output in ("preds.jsonl", "run", "art"):
        assert not (tmp_path / output).exists()


def test_the_crafted_set_is_a_set(base):
    """Each crafted case is its own (a copy-paste would test one case twice under two names)."""
    assert len(CHECKPOINTS + EXPORTS) == len(NAMES) == len(set(NAMES)) >= 15


def test_a_checkpoint_made_here_from_a_model_file_rebuilds_in_a_new_process_with_nothing_more(base, tmp_path,
                                                                                            capsys, monkeypatch):
    """The other side of the rule: a pretrain that named the file recorded it, so predicting with its
    checkpoint in a later process (nothing named there) needs no --trust-model-code; the same
    checkpoint copied to a machine whose list does not hold the file is refused."""
    monkeypatch.setenv(TRUST_ENV, "0")
    mine = tmp_path / "mine.py"
    mine.write_text("from edge_sel.models import EdgeCNN\n\n"
                    "def build(num_classes, in_channels=1):\n    return EdgeCNN(num_classes, in_channels, [4, 4, 4, 4])\n")
    code, err = run_main(["pretrain", "--model", f"{mine}:build", "--dataset", "digits", "--shard", "0/2", "--epochs",
                          "1", "--subset", "64", "--out", tmp_path / "ck", "--quiet", "--anchors-per-class", "0"],
                         capsys)
    assert code == 0, err
    monkeypatch.setattr(spec_mod, "_CHOSEN", set())
    code, err = run_main(["predict", "--checkpoint", tmp_path / "ck", base / "frames", "--quiet"], capsys)
    assert code == 0, err
    monkeypatch.setenv("EDGE_SEL_TRUST_FILE", str(tmp_path / "another-machine.json"))
    code, err = run_main(["predict", "--checkpoint", tmp_path / "ck", base / "frames", "--quiet"], capsys)
    assert code == 2 and "not named on this machine" in err, err
    code, err = run_main(["--trust-model-code", "predict", "--checkpoint", tmp_path / "ck", base / "frames",
                          "--quiet"], capsys)
    assert code == 0, err


def test_an_exports_manifest_naming_a_checkpoint_elsewhere_is_never_followed(base, tmp_path, capsys, monkeypatch):
    """Before: predict --backend ort loaded the torch checkpoint at manifest.json's checkpoint.path
    for its FLOP figures, running that checkpoint's code; now the export's own count is reported."""
    monkeypatch.setenv(TRUST_ENV, "0")
    monkeypatch.setattr(spec_mod, "_CHOSEN", set())
    shutil.copytree(base / "export", tmp_path / "export")
    shutil.copytree(base / "ckpt", tmp_path / "elsewhere")
    marker = tmp_path / "ran"
    helper = shipped_helper(tmp_path / "elsewhere", marker)
    set_card_model(tmp_path / "elsewhere", file_model(helper, digest=sha(helper)))
    rewrite_manifest(tmp_path / "export", lambda m: m["checkpoint"].update(path=str(tmp_path / "elsewhere")))
    counted = json.loads((base / "export" / "manifest.json").read_text())["inference_model"]
    code, err = run_main(["predict", "--checkpoint", tmp_path / "export", "--backend", "ort", base / "frames",
                          "--out", tmp_path / "p.jsonl", "--summary", tmp_path / "s.json", "--quiet"], capsys)
    assert code == 0, err
    assert not marker.exists()
    # EdgeCNN [4, 4, 4, 4] on 1 x 8 x 8, two FLOPs a multiply-add: 3 x 3 convolutions at 8, 4, 2 and 1
    # pixels square, then the 4 -> 10 head
    assert counted["flops_forward_per_image"] == 2 * (4 * 64 * 9 + 4 * 16 * 9 * 4 + 4 * 4 * 9 * 4 + 4 * 9 * 4 + 40)
    assert json.loads((tmp_path / "s.json").read_text())["flops_forward_per_image"] == \
        counted["flops_forward_per_image"]
