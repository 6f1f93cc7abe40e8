"""Property tests: random bad values in configuration, profiles and stage tables end in a clear
InputError (which the CLI prints as one line with exit 2), never in another exception."""

import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import run_main
from edge_sel.config import TrainConfig
from edge_sel.errors import InputError
from edge_sel.methods.select.stages import parse_stages
from edge_sel.profiles import load_profile

anything = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                     st.floats(allow_nan=True, allow_infinity=True),
                     st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, blacklist_characters="\x7f"), max_size=12))
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(field=st.sampled_from(["epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs",
                              "label_smoothing", "temperature", "checkpoint_every", "optimizer",
                              "schedule", "device"]),
       value=anything)
def test_train_config_rejects_bad_values_clearly(field, value):
    cfg = TrainConfig(epochs=5)
    setattr(cfg, field, value)
    try:
        cfg.validate()
    except InputError as e:
        assert str(e).startswith("--"), e          # names the option
    else:
        assert value is not None
        if isinstance(value, float):
            assert math.isfinite(value)


def _toml_value(v):
    if v is None:
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


KEYS = [("train", "batch_size"), ("train", "device"), ("train", "precision"), ("train", "cpu_threads"),
        ("method", "strategy"), ("method", "target_activation"), ("energy", "meters"), ("energy", "rails"),
        ("energy", "watts_per_core"), ("energy", "budget_j"), ("thermal", "max_temp_c"),
        ("thermal", "hysteresis_c"), ("bogus", "key"), ("train", "unknown_key")]


@FAST
@given(key=st.sampled_from(KEYS), value=anything)
@example(key=("method", "target_activation"), value=math.nan)
@example(key=("energy", "budget_j"), value=math.inf)
def test_profile_files_with_random_values_fail_clearly(tmp_path_factory, key, value):
    path = tmp_path_factory.mktemp("p") / "board.toml"
    path.write_text(f'name = "board"\n[{key[0]}]\n{key[1]} = {_toml_value(value)}\n')
    try:
        load_profile(str(path))
    except InputError as e:
        assert "board.toml" in str(e)               # names the file...
        assert key[1] in str(e) or key[0] in str(e)  # ...and the key
    else:
        assert not (isinstance(value, float) and not math.isfinite(value))     # refused wherever it is given


@FAST
@given(text=st.text(alphabet="0123456789-:.,%abnfi ", max_size=40))
def test_stage_tables_parse_or_fail_clearly(text):
    try:
        stages = parse_stages(text)
    except InputError as e:
        assert "--stages" in str(e)
    else:
        assert stages and all(0 <= s.start < s.end <= 100 and s.epochs >= 1 for s in stages)


@FAST
@given(junk=st.binary(max_size=200))
def test_corrupt_profile_bytes_fail_clearly(tmp_path_factory, junk):
    path = tmp_path_factory.mktemp("p") / "junk.toml"
    path.write_bytes(junk)
    try:
        load_profile(str(path))
    except InputError as e:
        assert "junk.toml" in str(e)


CLI_OPTIONS = ["--batch-size", "--lr", "--momentum", "--weight-decay", "--target-activation", "--shard",
               "--subset", "--val-fraction", "--energy-budget", "--stage-patience", "--layer-sparsity",
               "--guilt-percentile", "--min-activation", "--checkpoint-every", "--seed"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(CLI_OPTIONS),
       value=st.one_of(st.integers(-5, 5).map(str), st.sampled_from(["nan", "inf", "-1e9", "0.5", "1/2", "x", ""])),
       strategy=st.sampled_from(["dense", "sel", "sundew", "random"]))
# Found by this test one run in eight before it was derandomized: a ValueError in the loop, exit 1.
@example(option="--target-activation", value="nan", strategy="sundew")
@example(option="--energy-budget", value="nan", strategy="dense")        # ran to the end, exit 0
def test_finetune_options_end_in_success_or_one_line_exit_2(tiny_warm, tmp_path_factory, capsys, option, value,
                                                             strategy):
    out = tmp_path_factory.mktemp("run") / "r"
    code, err = run_main(["finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "0",
                          "--out", out, "--quiet", "--strategy", strategy, option, value], capsys)
    assert code in (0, 2), err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edge-sel: error:"), err
    assert "Traceback" not in err
    if value in ("nan", "inf"):
        assert code == 2, err           # no option takes a number that is not finite
