"""The deployed model's link and versions (edge_sel/engine/night/deployed_swap.py), file by file: what a
version holds, how a plain directory becomes a link, what is kept, and how a crash is repaired.
No model is loaded: a version is only files, so these run in milliseconds."""

import os
import time

import pytest

from edge_sel.engine.night import deployed_swap as swap
from edge_sel.engine.night.deployed_swap import DAMAGED, KEEP_VERSIONS


def run_dir(path, weights, *extra):
    """A run's outputs: its weights (the text stands for them), its card, and any `extra` files."""
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text(weights)
    (path / "model.json").write_text(f'{{"card": "{weights}"}}')
    for name in extra:
        (path / name).write_text(f"{name} of {weights}")
    return path


def plain_deployed(path):
    """A deployed directory as older installs have it: model files and a site's own notes."""
    run_dir(path, "old", "bn_bank.safetensors")
    (path / "notes.txt").write_text("site notes")
    (path / "calibration").mkdir()
    (path / "calibration" / "lens.json").write_text("{}")
    return path


def contents(directory):
    return {p.relative_to(directory).as_posix(): p.read_text() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_plain_deployed_directory_becomes_a_link_and_the_old_one_is_kept(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setenv("EDGE_SEL_NO_RENAME_EXCHANGE", "1")
    deployed = plain_deployed(tmp_path / "deployed")
    before = contents(deployed)
    version = swap.swap_in(run_dir(tmp_path / "run-a", "new"), deployed)

    assert deployed.is_symlink() and not os.path.isabs(os.readlink(deployed))     # relative: the home can move
    assert deployed.resolve() == version and version.parent == tmp_path / ".deployed.versions"
    # The run's weights and card; the site's files carried over; the old bank is the old weights'.
    assert contents(deployed) == {"calibration/lens.json": "{}", "model.json": '{"card": "new"}',
                                  "model.safetensors": "new", "notes.txt": "site notes"}
    kept = version.parent / f"{version.name}.migrated-from-plain"
    assert contents(kept) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".deployed.versions", "deployed", "run-a"]   # no link-tmp


def test_a_version_is_named_by_the_utc_time_and_the_run_and_never_overwrites_one(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "gmtime", lambda *a: time.struct_time((2026, 11, 23, 2, 30, 0, 0, 327, 0)))
    deployed = tmp_path / "deployed"
    first = swap.swap_in(run_dir(tmp_path / "night", "one"), deployed)
    (tmp_path / "night" / "model.safetensors").write_text("two")
    second = swap.swap_in(tmp_path / "night", deployed)
    assert first.name == "20261123T023000Z-night" and second.name == "20261123T023000Z-night.2"
    assert (first / "model.safetensors").read_text() == "one"
    assert (deployed / "model.safetensors").read_text() == "two"


def test_the_run_brings_its_bank_and_source_memory_and_a_run_without_them_leaves_no_stale_bank(tmp_path):
    deployed = tmp_path / "deployed"
    memory = ("anchors.safetensors", "fisher.safetensors", "source.safetensors")
    assert swap.files_from_run(run_dir(tmp_path / "full", "full", "bn_bank.safetensors", *memory)) == \
        (*memory, "bn_bank.safetensors", "model.safetensors", "model.json")        # the card last
    swap.swap_in(tmp_path / "full", deployed)
    assert contents(deployed)["bn_bank.safetensors"] == "bn_bank.safetensors of full"
    assert all(contents(deployed)[name] == f"{name} of full" for name in memory)
    # Two of three source files are no source memory: the deployed one stays whole.
    swap.swap_in(run_dir(tmp_path / "bare", "bare", *memory[:2]), deployed)
    held = contents(deployed)
    assert "bn_bank.safetensors" not in held and held["model.safetensors"] == "bare"
    assert all(held[name] == f"{name} of full" for name in memory)


def test_versions_kept_are_the_deployed_one_and_the_one_before_damaged_ones_stay_for_a_look(tmp_path):
    assert KEEP_VERSIONS == 2
    deployed = tmp_path / "deployed"
    made = [swap.swap_in(run_dir(tmp_path / f"r{i}", str(i)), deployed) for i in range(2)]
    set_aside = made[0].with_name(made[0].name + DAMAGED)
    made[0].rename(set_aside)
    unfinished = made[0].with_name("x.tmp")
    unfinished.mkdir()
    made += [swap.swap_in(run_dir(tmp_path / f"r{i}", str(i)), deployed) for i in range(2, 5)]
    names = sorted(p.name for p in made[-1].parent.iterdir())
    assert names == sorted([made[3].name, made[4].name, set_aside.name])      # the swap's recover removed x.tmp
    assert swap.other_versions(deployed) == [made[3]]


def test_other_versions_are_complete_ones_besides_the_deployed_newest_name_first(tmp_path):
    deployed = tmp_path / "deployed"
    versions = tmp_path / ".deployed.versions"
    assert swap.other_versions(deployed) == []                  # nothing deployed yet
    for name in ("20260101T000000Z-a", "20260301T000000Z-c", "20260201T000000Z-b", "x.tmp", "y" + DAMAGED):
        (versions / name).mkdir(parents=True)
    (versions / "a-file").write_text("")
    deployed.symlink_to(".deployed.versions/20260201T000000Z-b")
    assert [v.name for v in swap.other_versions(deployed)] == ["20260301T000000Z-c", "20260101T000000Z-a"]


def test_recover_repairs_what_a_crash_inside_a_swap_leaves(tmp_path):
    deployed = tmp_path / "deployed"
    versions = tmp_path / ".deployed.versions"
    swap.recover(deployed)                                      # nothing ever deployed: nothing to do
    assert not versions.exists() and not os.path.lexists(deployed)
    for name, weights in (("20260101T000000Z-a", "a"), ("20260115T000000Z-a2", "a2"), ("20260201T000000Z-b", "b")):
        run_dir(versions / name, weights)
    (versions / "20260301T000000Z-c").mkdir()                   # no weights: not complete
    run_dir(versions / ("20260401T000000Z-d" + DAMAGED), "d")   # set aside: never deployed again
    run_dir(versions / "20260501T000000Z-e.tmp", "e")           # an unfinished build
    swap.recover(deployed)                                      # the link lost between two renames
    assert deployed.resolve() == (versions / "20260201T000000Z-b").resolve()
    assert not (versions / "20260501T000000Z-e.tmp").exists()
    plain = plain_deployed(tmp_path / ".deployed.link-tmp")     # the old plain directory, exchanged out
    swap.recover(deployed)
    assert not os.path.lexists(plain) and deployed.resolve() == (versions / "20260201T000000Z-b").resolve()
    migrated = [v for v in versions.iterdir() if v.name.endswith(".migrated-from-plain")]
    assert len(migrated) == 1 and contents(migrated[0])["model.safetensors"] == "old"
    # A dangling new link left by a crash is removed; a deployed link in place is left as it is.
    (tmp_path / ".deployed.link-tmp").symlink_to("nowhere")
    swap.recover(deployed)
    assert not os.path.lexists(tmp_path / ".deployed.link-tmp")
    assert deployed.resolve() == (versions / "20260201T000000Z-b").resolve()


def test_roll_back_sets_the_deployed_version_aside_and_points_to_the_one_given_or_to_none(tmp_path):
    deployed = tmp_path / "deployed"
    first = swap.swap_in(run_dir(tmp_path / "r1", "one"), deployed)
    second = swap.swap_in(run_dir(tmp_path / "r2", "two"), deployed)
    swap.roll_back(deployed, first)
    assert deployed.resolve() == first and not second.exists()
    assert (second.with_name(second.name + DAMAGED) / "model.safetensors").read_text() == "two"
    swap.roll_back(deployed, None)                              # none loads: the warmup serves
    assert not os.path.lexists(deployed)
    assert (first.with_name(first.name + DAMAGED) / "model.safetensors").read_text() == "one"


def test_a_link_tmp_in_the_way_is_replaced_not_an_error(tmp_path):
    deployed = tmp_path / "deployed"
    swap.swap_in(run_dir(tmp_path / "r1", "one"), deployed)
    (tmp_path / ".deployed.link-tmp").write_text("left by something else")
    swap._point_link(deployed, swap.swap_in(run_dir(tmp_path / "r2", "two"), deployed))
    assert (deployed / "model.safetensors").read_text() == "two"
    assert not os.path.lexists(tmp_path / ".deployed.link-tmp")


NIGHT = time.struct_time((2026, 11, 23, 2, 30, 0, 0, 327, 0))


@pytest.mark.parametrize("point, exchange, after_crash, after_recover", [
    ("promote-staged", True, "old", "old"),
    ("promote-versioned", True, "old", "old"),
    ("promote-exchanged", True, "new", "new"),
    ("promote-exchanged", False, None, "old"),      # between the two renames: no deployed path at all
    ("promote-flipped", True, "new", "new"),
])
def test_a_crash_at_each_step_leaves_the_old_model_or_the_new_and_recover_tidies_up(
        tmp_path, monkeypatch, point, exchange, after_crash, after_recover):
    from edge_sel.engine import faults
    monkeypatch.setattr(time, "gmtime", lambda *a: NIGHT)
    monkeypatch.setattr(faults, "crash_by_raising", True)
    monkeypatch.setenv(faults.KILL_ENV, point)
    if not exchange:
        monkeypatch.setenv("EDGE_SEL_NO_RENAME_EXCHANGE", "1")
    deployed = plain_deployed(tmp_path / "deployed")
    versions = tmp_path / ".deployed.versions"
    with pytest.raises(faults.InjectedCrash, match=point):
        swap.swap_in(run_dir(tmp_path / "run", "new"), deployed)
    held = (deployed / "model.safetensors").read_text() if os.path.lexists(deployed) else None
    assert held == after_crash
    left = sorted(p.name for p in versions.iterdir())
    assert left == {"promote-staged": ["20261123T023000Z-run.tmp"],
                    "promote-exchanged": ["20261123T023000Z-run"] + (
                        [] if exchange else ["20261123T023000Z-run.migrated-from-plain"])
                    }.get(point, ["20261123T023000Z-run"] + (["20261123T023000Z-run.migrated-from-plain"]
                                                            if point == "promote-flipped" else []))

    monkeypatch.delenv(faults.KILL_ENV)
    swap.recover(deployed)
    assert (deployed / "model.safetensors").read_text() == after_recover
    assert not os.path.lexists(tmp_path / ".deployed.link-tmp")
    assert not [p for p in versions.iterdir() if p.name.endswith(".tmp")]
    if point == "promote-exchanged" and exchange:      # the old plain directory, kept under the time of the repair
        assert contents(versions / "20261123T023000Z.migrated-from-plain")["model.safetensors"] == "old"


def test_the_exchange_swaps_two_paths_in_one_call_and_a_real_error_is_raised(tmp_path, monkeypatch):
    """renameat2(RENAME_EXCHANGE) on Linux: both names stay, their targets trade places; an error
    that is not 'unsupported here' (a missing path) is not hidden behind the two-rename fallback.
    Relative paths, as a home given relatively has them: they resolve from the working directory."""
    import errno
    from pathlib import Path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "f").write_text("plain")
    (tmp_path / "link").symlink_to("elsewhere")
    assert swap._exchange(Path("plain"), Path("link")) is True
    assert os.readlink(tmp_path / "plain") == "elsewhere" and (tmp_path / "link" / "f").read_text() == "plain"
    with pytest.raises(OSError) as raised:
        swap._exchange(Path("missing"), Path("link"))
    assert (raised.value.errno, raised.value.strerror, raised.value.filename) == \
        (errno.ENOENT, os.strerror(errno.ENOENT), "link")
    # EINVAL (here: a directory into its own subdirectory) is among the answers of a filesystem that
    # cannot exchange, so the caller falls back to two renames.
    (tmp_path / "link" / "inner").mkdir()
    assert swap._exchange(tmp_path / "link", tmp_path / "link" / "inner") is False


def test_stray_files_where_a_swap_works_do_not_stop_it_and_links_a_site_keeps_stay_links(tmp_path):
    deployed = plain_deployed(tmp_path / "deployed")
    (deployed / "current-lens.json").symlink_to("calibration/lens.json")
    (deployed / "calibration" / "latest").symlink_to("lens.json")
    (tmp_path / ".deployed.link-tmp").write_text("a stray file")
    (tmp_path / ".deployed.versions").mkdir()
    (tmp_path / ".deployed.versions" / "stray.tmp").write_text("a stray file")
    swap.swap_in(run_dir(tmp_path / "run", "new"), deployed)
    assert os.readlink(deployed / "current-lens.json") == "calibration/lens.json"
    assert os.readlink(deployed / "calibration" / "latest") == "lens.json"
    assert (deployed / "model.safetensors").read_text() == "new"


def test_an_error_after_the_flip_says_what_failed_in_the_systems_words():
    error = swap.AfterSwapError("v1", OSError(28, "No space left on device"))
    assert str(error) == "No space left on device" and error.version == "v1"
    assert str(swap.AfterSwapError("v1", OSError("disk gone"))) == "disk gone"


def test_a_version_the_prune_cannot_remove_does_not_make_the_swap_an_error(tmp_path):
    deployed = tmp_path / "deployed"
    swap.swap_in(run_dir(tmp_path / "r1", "one"), deployed)
    elsewhere = run_dir(tmp_path / "kept-by-the-site", "site")
    (tmp_path / ".deployed.versions" / "00000000T000000Z-site").symlink_to(elsewhere)   # rmtree refuses links
    swap.swap_in(run_dir(tmp_path / "r2", "two"), deployed)
    assert (deployed / "model.safetensors").read_text() == "two" and (elsewhere / "model.safetensors").exists()
