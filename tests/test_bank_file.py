"""The bank's file (edge_sel/core/bn_bank.py) field by field: what write_bank stores under which
name, what read_bank gives back, and each damaged field refused in one line naming the file, the
condition and the field. Banks are written here from small tensors, so these run in milliseconds."""

import json

import pytest
import torch
from safetensors.torch import save_file

from edge_sel.core.bn_bank import BANK_FILE, SavedCondition, check_bank_layers, read_bank, write_bank
from edge_sel.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = [1, 4, 4]


def condition(name="src", n=3, layers=("a", "b"), sizes=(2, 3), nights=1, info=None, shift=0.0):
    images = torch.arange(n * 16, dtype=torch.uint8).view(n, *SHAPE)
    stats = {layer: (torch.arange(size, dtype=torch.float64) + shift, torch.full((size,), 0.5 + shift))
             for layer, size in zip(layers, sizes)}
    return SavedCondition(name, images, stats, nights, dict(info or {}),
                          (torch.tensor([0.1, 0.2], dtype=torch.float64), torch.tensor([1.0, 2.0])))


class Net(torch.nn.Module):
    def __init__(self, sizes=(("a", 2), ("b", 3))):
        super().__init__()
        for name, size in sizes:
            self.add_module(name, torch.nn.BatchNorm2d(size))
        self.conv = torch.nn.Conv2d(1, 1, 1)


def test_a_bank_reads_back_what_was_written(tmp_path):
    """Mutants: a tensor's name, its float32 conversion, the metadata's fields, the size returned."""
    conds = [condition(info={"run": "night-1"}), condition("fog:3", n=2, nights=4, shift=1.0)]
    size = write_bank(tmp_path / BANK_FILE, conds)
    assert size == (tmp_path / BANK_FILE).stat().st_size and size > 0
    back = read_bank(tmp_path, SHAPE)
    assert [c.name for c in back] == ["src", "fog:3"] and [c.nights for c in back] == [1, 4]
    assert back[0].info == {"run": "night-1"} and back[1].info == {}
    for c, orig in zip(back, conds):
        assert torch.equal(c.images, orig.images) and c.images.dtype == torch.uint8
        assert list(c.stats) == ["a", "b"]
        for layer in ("a", "b"):
            assert c.stats[layer][0].dtype == torch.float32 and c.stats[layer][1].dtype == torch.float32
            assert torch.equal(c.stats[layer][0], orig.stats[layer][0].float())
            assert torch.equal(c.stats[layer][1], orig.stats[layer][1].float())
        assert c.fingerprint[0].dtype == torch.float32 and torch.equal(c.fingerprint[0], orig.fingerprint[0].float())
        assert torch.equal(c.fingerprint[1], orig.fingerprint[1])
    from safetensors import safe_open
    with safe_open(str(tmp_path / BANK_FILE), "pt") as f:
        meta = json.loads(f.metadata()["conditions"])
        keys = set(f.keys())
    assert meta == [{"name": "src", "nights": 1, "layers": ["a", "b"], "run": "night-1"},
                    {"name": "fog:3", "nights": 4, "layers": ["a", "b"]}]
    assert keys == {f"{i}.{k}" for i in (0, 1) for k in ("images", "fingerprint_mean", "fingerprint_var",
                                                          "mean.a", "var.a", "mean.b", "var.b")}


def test_no_bank_is_none(tmp_path):
    assert read_bank(tmp_path, SHAPE) is None
    (tmp_path / BANK_FILE).mkdir()
    assert read_bank(tmp_path, SHAPE) is None


def write_raw(tmp_path, tensors, meta):
    path = tmp_path / BANK_FILE
    save_file(tensors, str(path), metadata=None if meta is None else {"conditions": json.dumps(meta)})
    return path


def raw(c: SavedCondition, i=0):
    t = {f"{i}.images": c.images, f"{i}.fingerprint_mean": c.fingerprint[0].float(),
         f"{i}.fingerprint_var": c.fingerprint[1].float()}
    for layer, (m, v) in c.stats.items():
        t[f"{i}.mean.{layer}"], t[f"{i}.var.{layer}"] = m.float(), v.float()
    return t


def meta_of(c: SavedCondition, **change):
    return {"name": c.name, "nights": c.nights, "layers": list(c.stats), **change}


def refused(tmp_path, tensors, meta, shape=SHAPE) -> str:
    path = write_raw(tmp_path, tensors, meta)
    with pytest.raises(InputError) as e:
        read_bank(tmp_path, shape)
    assert str(e.value).startswith(f"{path}: ")
    return str(e.value)[len(f"{path}: "):]


def test_a_file_that_is_not_a_bank_is_unreadable_or_corrupt(tmp_path):
    c = condition()
    assert refused(tmp_path, raw(c), None) == "unreadable or corrupt (KeyError: 'conditions')"
    assert refused(tmp_path, raw(c), []) == "unreadable or corrupt (ValueError: it keeps no condition)"
    assert refused(tmp_path, raw(c), {"name": "x"}) == "unreadable or corrupt (ValueError: it keeps no condition)"
    del_images = {k: v for k, v in raw(c).items() if k != "0.images"}
    assert refused(tmp_path, del_images, [meta_of(c)]) == "unreadable or corrupt (KeyError: '0.images')"
    (tmp_path / BANK_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(InputError, match="unreadable or corrupt"):
        read_bank(tmp_path, SHAPE)
    path = tmp_path / BANK_FILE
    save_file(raw(c), str(path), metadata={"conditions": "[{"})
    with pytest.raises(InputError) as e:
        read_bank(tmp_path, SHAPE)
    assert str(e.value).startswith(f"{path}: unreadable or corrupt (JSONDecodeError: ")


@pytest.mark.parametrize("meta, said", [
    ("text", "condition 0: no name or layer list"),
    ({"nights": 1, "layers": ["a", "b"]}, "condition 0: no name or layer list"),
    ({"name": 5, "nights": 1, "layers": ["a", "b"]}, "condition 0: no name or layer list"),
    ({"name": "src", "nights": 1}, "condition 0: no name or layer list"),
    ({"name": "src", "nights": 1, "layers": "a"}, "condition 0: no name or layer list"),
    ({"name": "src", "layers": ["a", "b"]}, "condition 'src': nights must be a whole number >= 1, got None"),
    ({"name": "src", "nights": 0, "layers": ["a", "b"]}, "condition 'src': nights must be a whole number >= 1, got 0"),
    ({"name": "src", "nights": True, "layers": ["a", "b"]},
     "condition 'src': nights must be a whole number >= 1, got True"),
    ({"name": "src", "nights": 1.5, "layers": ["a", "b"]},
     "condition 'src': nights must be a whole number >= 1, got 1.5"),
    ({"name": "src", "nights": "2", "layers": ["a", "b"]},
     "condition 'src': nights must be a whole number >= 1, got '2'"),
    ({"name": "src", "nights": 1, "layers": []}, "condition 'src' keeps no BatchNorm layer"),
])
def test_a_conditions_name_nights_and_layer_list_are_checked(tmp_path, meta, said):
    assert refused(tmp_path, raw(condition()), [meta]) == said


def test_one_night_is_enough(tmp_path):
    c = condition()
    write_raw(tmp_path, raw(c), [meta_of(c, nights=1)])
    assert read_bank(tmp_path, SHAPE)[0].nights == 1


def test_the_images_must_be_uint8_of_the_models_input_shape_and_at_least_two(tmp_path):
    c = condition()
    for images, said in [(c.images.float(), "3 torch.float32 [1, 4, 4]"), (c.images[:, :, :3], "3 torch.uint8 [1, 3, 4]"),
                         (c.images[:1], "1 torch.uint8 [1, 4, 4]")]:
        assert refused(tmp_path, {**raw(c), "0.images": images.contiguous()}, [meta_of(c)]) == (
            f"condition 'src' holds {said} images, the model takes uint8 [1, 4, 4] (at least 2)")
    assert refused(tmp_path, raw(c), [meta_of(c)], shape=[3, 4, 4]) == (
        "condition 'src' holds 3 torch.uint8 [1, 4, 4] images, the model takes uint8 [3, 4, 4] (at least 2)")
    two = condition(n=2)
    write_raw(tmp_path, raw(two), [meta_of(two)])
    assert len(read_bank(tmp_path, (1, 4, 4))[0].images) == 2          # a tuple shape is the same shape


def test_each_layers_statistics_must_be_one_finite_vector_of_one_size(tmp_path):
    c = condition()
    cases = [({"0.mean.a": torch.zeros(2, 1)}, "condition 'src', layer a: mean [2, 1] and variance [2] are not one "
                                              "vector each of one size"),
             ({"0.var.b": torch.ones(4)}, "condition 'src', layer b: mean [3] and variance [4] are not one vector "
                                         "each of one size"),
             ({"0.mean.a": torch.tensor([0.0, float("nan")])}, "condition 'src', layer a: non-finite or negative statistics"),
             ({"0.var.a": torch.tensor([1.0, float("inf")])}, "condition 'src', layer a: non-finite or negative statistics"),
             ({"0.var.b": torch.tensor([1.0, -0.1, 1.0])}, "condition 'src', layer b: non-finite or negative statistics"),
             ({"0.fingerprint_mean": torch.tensor([0.0, float("inf")])}, "condition 'src': non-finite fingerprint"),
             ({"0.fingerprint_var": torch.tensor([float("nan"), 1.0])}, "condition 'src': non-finite fingerprint")]
    for change, said in cases:
        assert refused(tmp_path, {**raw(c), **change}, [meta_of(c)]) == said, change
    zero = {**raw(c), "0.var.a": torch.zeros(2)}             # a variance of zero is a variance
    write_raw(tmp_path, zero, [meta_of(c)])
    assert torch.equal(read_bank(tmp_path, SHAPE)[0].stats["a"][1], torch.zeros(2))


def test_every_condition_keeps_the_same_layers_as_the_first(tmp_path):
    first, other = condition(), condition("fog", layers=("a", "c"))
    tensors = {**raw(first), **raw(other, 1)}
    assert refused(tmp_path, tensors, [meta_of(first), meta_of(other)]) == (
        "condition 'fog' keeps other BatchNorm layers than 'src'")
    wider = condition("fog", sizes=(2, 4))
    assert refused(tmp_path, {**raw(first), **raw(wider, 1)}, [meta_of(first), meta_of(wider)]) == (
        "condition 'fog' keeps other BatchNorm layers than 'src'")
    third = condition("snow", layers=("a",), sizes=(2,))
    tensors = {**raw(first), **raw(condition("fog"), 1), **raw(third, 2)}
    assert refused(tmp_path, tensors, [meta_of(first), meta_of(condition("fog")), meta_of(third)]) == (
        "condition 'snow' keeps other BatchNorm layers than 'src'")


def test_a_bank_must_fit_the_models_batchnorm_layers(tmp_path):
    write_bank(tmp_path / BANK_FILE, [condition()])
    assert [c.name for c in read_bank(tmp_path, SHAPE, Net())] == ["src"]
    path = tmp_path / BANK_FILE
    for sizes, said in [((("a", 2), ("b", 3), ("c", 1)), "layer c: bank None, model 1 features"),
                        ((("a", 2),), "layer b: bank 3, model None features"),
                        ((("a", 5), ("b", 3)), "layer a: bank 2, model 5 features"),
                        ((("a", 2), ("b", 4)), "layer b: bank 3, model 4 features"),
                        ((("b", 3), ("d", 1), ("c", 2)), "layer c: bank None, model 2 features")]:
        with pytest.raises(InputError) as e:
            read_bank(tmp_path, SHAPE, Net(sizes))
        assert str(e.value) == f"{path}: its BatchNorm statistics do not fit the model ({said})", sizes
    with pytest.raises(InputError) as e:
        check_bank_layers([condition(layers=("z", "y"), sizes=(1, 1))], Net(), tmp_path / "ckpt")
    assert str(e.value) == (f"{tmp_path / 'ckpt' / BANK_FILE}: its BatchNorm statistics do not fit the model "
                            f"(layer a: bank None, model 2 features)")
    check_bank_layers([condition()], Net(), "ckpt")
