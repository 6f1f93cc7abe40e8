"""The deployed model's link and versions (edge_sel/engine/night/deployed_swap.py), file by file: what a
version holds, how a plain directory becomes a link, what is kept, and how a crash is repaired.
No model is loaded: a version is only files, so these run in milliseconds."""

import os
import time
from pathlib import Path

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
    # The run's weights and card, nothing else: the old bank is the old weights', and files that are
    # no part of a checkpoint (a site's notes, an output written there) stay with the old version.
    assert contents(deployed) == {"model.json": '{"card": "new"}', "model.safetensors": "new"}
    kept = version.parent / f"{version.name}.migrated-from-plain"
    assert contents(kept) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".deployed.versions", "deployed", "run-a"]   # no link-tmp


def test_a_version_is_named_by_its_number_the_utc_time_and_the_run_and_never_overwrites_one(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "gmtime", lambda *a: time.struct_time((2026, 11, 23, 2, 30, 0, 0, 327, 0)))
    deployed = tmp_path / "deployed"
    first = swap.swap_in(run_dir(tmp_path / "night", "one"), deployed)
    (tmp_path / "night" / "model.safetensors").write_text("two")
    second = swap.swap_in(tmp_path / "night", deployed)
    assert first.name == "000001-20261123T023000Z-night" and second.name == "000002-20261123T023000Z-night"
    assert (first / "model.safetensors").read_text() == "one"
    assert (deployed / "model.safetensors").read_text() == "two"
    # The next number is one more than any version's there, a version set aside included; names
    # from before numbering count as none.
    swap.mark_damaged(second.with_name("000002-20261123T023000Z-night"))
    (first.parent / "20991231T000000Z-legacy").mkdir()
    assert swap.swap_in(tmp_path / "night", deployed).name == "000003-20261123T023000Z-night"


def test_a_clock_set_back_never_makes_a_newer_version_look_older(tmp_path, monkeypatch):
    """A night with the clock a year back named its version by that time: by name it sorted before
    the versions it followed, so a roll back chose an older model than the one deployed before, and
    the prune could remove the previous one. The order is the versions' numbers."""
    deployed = tmp_path / "deployed"
    made = []
    for i, year in enumerate((2026, 2025, 2026)):       # the second night's clock is a year back
        monkeypatch.setattr(time, "gmtime", lambda *a, y=year, d=i: time.struct_time((y, 11, 23 + d, 2, 30, 0, 0, 327, 0)))
        made.append(swap.swap_in(run_dir(tmp_path / f"r{i}", str(i)), deployed))
        made[-1].touch()
    assert [v.name for v in made] == ["000001-20261123T023000Z-r0", "000002-20251124T023000Z-r1",
                                      "000003-20261125T023000Z-r2"]
    assert swap.other_versions(deployed) == [made[1]]           # the one before: kept, and the newest other
    os.utime(made[1], (0, 0))                                   # a modification time that says nothing either
    (made[0].parent / "000000-20300101T000000Z-early").mkdir()   # stray but older by number
    (made[0].parent / "000000-20300101T000000Z-early" / "model.safetensors").write_text("e")
    swap.roll_back(deployed, made[1])
    assert [v.name for v in swap.other_versions(deployed)] == ["000000-20300101T000000Z-early"]
    assert swap.made_order(made[0].with_name("000004-x.migrated-from-plain")) < swap.made_order(
        made[0].with_name("000004-x")) < swap.made_order(made[0].with_name("000005-a"))
    assert swap.made_order(made[0].with_name("20991231T000000Z-legacy"))[0] == -1


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
    # Nothing deployed before a swap (a roll back left the warmup serving): the newest other by
    # number is kept beside the new one, whatever the modification times or the names say (a version
    # named before numbering is older than any numbered one, though its name sorts after theirs).
    deployed.unlink()
    os.utime(made[3], (0, 0))
    for name in ("000000-z", "20991231T000000Z-legacy"):
        (made[3].parent / name).mkdir()
        (made[3].parent / name / "model.safetensors").write_text("z")
    newest = swap.swap_in(run_dir(tmp_path / "r5", "5"), deployed)
    assert sorted(p.name for p in newest.parent.iterdir()) == sorted([made[4].name, newest.name, set_aside.name])


def test_a_version_written_but_never_deployed_does_not_push_the_previous_model_out(tmp_path, monkeypatch):
    """A crash after a version is renamed into place but before the link flips leaves a version
    newer by number than the deployed one: the next swap keeps the model deployed before it (by the
    link, mutated: previous None), not that never-deployed one."""
    from edge_sel.engine import faults
    deployed = tmp_path / "deployed"
    made = [swap.swap_in(run_dir(tmp_path / f"r{i}", str(i)), deployed) for i in range(2)]
    monkeypatch.setattr(faults, "crash_by_raising", True)
    monkeypatch.setenv(faults.KILL_ENV, "promote-versioned")
    with pytest.raises(faults.InjectedCrash):
        swap.swap_in(run_dir(tmp_path / "r2", "2"), deployed)
    monkeypatch.delenv(faults.KILL_ENV)
    assert deployed.resolve() == made[1] and len(list(made[1].parent.iterdir())) == 3
    newest = swap.swap_in(run_dir(tmp_path / "r3", "3"), deployed)
    assert sorted(made[1].parent.iterdir()) == [made[1], newest]
    assert swap.other_versions(deployed) == [made[1]]


def test_other_versions_are_complete_ones_besides_the_deployed_newest_number_first(tmp_path):
    deployed = tmp_path / "deployed"
    versions = tmp_path / ".deployed.versions"
    assert swap.other_versions(deployed) == []                  # nothing deployed yet
    for name in ("000009-20260101T000000Z-a", "000010-20250301T000000Z-c", "000002-20260201T000000Z-b",
                 "20270101T000000Z-legacy", "000011-x.tmp", "000012-y" + DAMAGED):
        (versions / name).mkdir(parents=True)
    (versions / "a-file").write_text("")
    deployed.symlink_to(".deployed.versions/000002-20260201T000000Z-b")
    assert [v.name for v in swap.other_versions(deployed)] == ["000010-20250301T000000Z-c", "000009-20260101T000000Z-a",
                                                               "20270101T000000Z-legacy"]


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
    # No deployed path and no swap under way: a roll back left the warmup serving, and it still does.
    swap.recover(deployed)
    assert not os.path.lexists(deployed) and not (versions / "20260501T000000Z-e.tmp").exists()
    # Cut off between the two renames: the new link waits beside, the old plain directory is kept
    # as NEW.migrated-from-plain; the model deployed before serves again.
    run_dir(versions / "20260201T000000Z-b.migrated-from-plain", "old")
    (tmp_path / ".deployed.link-tmp").symlink_to(".deployed.versions/20260201T000000Z-b")
    swap.recover(deployed)
    assert (deployed / "model.safetensors").read_text() == "old"
    assert not os.path.lexists(tmp_path / ".deployed.link-tmp")
    plain = plain_deployed(tmp_path / ".deployed.link-tmp")     # the old plain directory, exchanged out
    swap.recover(deployed)
    assert not os.path.lexists(plain) and (deployed / "model.safetensors").read_text() == "old"
    migrated = [v for v in versions.iterdir() if v.name.endswith("Z.migrated-from-plain")]
    assert len(migrated) == 1 and contents(migrated[0])["model.safetensors"] == "old"
    # A dangling new link left by a crash is removed; a deployed link in place is left as it is.
    (tmp_path / ".deployed.link-tmp").symlink_to("nowhere")
    swap.recover(deployed)
    assert not os.path.lexists(tmp_path / ".deployed.link-tmp")
    assert (deployed / "model.safetensors").read_text() == "old"


def test_recover_never_deploys_a_version_set_aside_or_when_the_warmup_serves(tmp_path):
    """Issue 45, item 9: after a roll back left the warmup serving, the next night's recover()
    pointed the link at a version known not to load."""
    deployed = tmp_path / "deployed"
    versions = tmp_path / ".deployed.versions"
    run_dir(versions / ("20260101T000000Z-a" + DAMAGED), "a")
    run_dir(versions / "20260102T000000Z-b", "b")
    swap.recover(deployed)
    assert not os.path.lexists(deployed)
    (tmp_path / ".deployed.link-tmp").symlink_to(".deployed.versions/20260101T000000Z-a")   # no old one beside it
    swap.recover(deployed)
    assert not os.path.lexists(deployed) and not os.path.lexists(tmp_path / ".deployed.link-tmp")
    # A new link left beside a deployed link in place (a crash inside _point_link) changes nothing,
    # even with an old version beside the one it names.
    deployed.symlink_to(".deployed.versions/20260102T000000Z-b")
    run_dir(versions / "20260102T000000Z-b.migrated-from-plain", "old")
    (tmp_path / ".deployed.link-tmp").symlink_to(".deployed.versions/20260102T000000Z-b")
    swap.recover(deployed)
    assert (deployed / "model.safetensors").read_text() == "b"


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
    new = "000001-20261123T023000Z-run"
    assert left == {"promote-staged": [new + ".tmp"],
                    "promote-exchanged": [new] + ([] if exchange else [new + ".migrated-from-plain"]),
                    }.get(point, [new] + ([new + ".migrated-from-plain"] if point == "promote-flipped" else []))

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


def test_stray_files_where_a_swap_works_do_not_stop_it_and_only_checkpoint_files_are_carried(tmp_path):
    """Issue 45, item 7: a prediction file or a damaged bank beside the deployed model was copied
    into the next version."""
    deployed = plain_deployed(tmp_path / "deployed")
    (deployed / "current-lens.json").symlink_to("calibration/lens.json")
    (deployed / "preds.jsonl").write_text("{}\n")
    (deployed / "bn_bank.safetensors.damaged").write_text("torn")
    for name in ("anchors.safetensors", "fisher.safetensors", "source.safetensors"):
        (deployed / name).write_text(f"{name} of old")
    (tmp_path / ".deployed.link-tmp").write_text("a stray file")
    (tmp_path / ".deployed.versions").mkdir()
    (tmp_path / ".deployed.versions" / "stray.tmp").write_text("a stray file")
    swap.swap_in(run_dir(tmp_path / "run", "new", "notes.txt"), deployed)
    assert sorted(os.listdir(deployed)) == ["anchors.safetensors", "fisher.safetensors", "model.json",
                                            "model.safetensors", "source.safetensors"]
    assert (deployed / "model.safetensors").read_text() == "new"
    assert (deployed / "anchors.safetensors").read_text() == "anchors.safetensors of old"     # the source memory stays
    old = next(v for v in (tmp_path / ".deployed.versions").iterdir() if v.name.endswith("migrated-from-plain"))
    assert os.readlink(old / "current-lens.json") == "calibration/lens.json" and (old / "preds.jsonl").is_file()


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


def test_promote_manages_only_its_link_a_checkpoint_directory_or_nothing(tmp_path):
    """Issue 45, item 6: `promote --force` onto a user's file replaced it by a link."""
    from edge_sel.errors import InputError
    deployed = tmp_path / "deployed"
    swap.check_deployed_place(deployed)                                   # nothing yet
    deployed.mkdir()
    swap.check_deployed_place(deployed)                                   # empty
    (deployed / "model.safetensors").write_text("w")
    swap.check_deployed_place(deployed)                                   # a plain checkpoint (older installs)
    swap.swap_in(run_dir(tmp_path / "run", "new"), deployed)
    swap.check_deployed_place(deployed)                                   # its own link
    users = tmp_path / "notes.txt"
    users.write_text("mine")
    with pytest.raises(InputError) as e:
        swap.check_deployed_place(users, "--place")
    assert str(e.value) == (f"--place {users}: exists and is not a deployed model (a file, not a directory or a "
                            f"link to a version); promote never replaces it")
    (tmp_path / "elsewhere").symlink_to("run")
    with pytest.raises(InputError) as e:
        swap.check_deployed_place(tmp_path / "elsewhere")
    assert str(e.value) == (f"--deployed {tmp_path / 'elsewhere'}: a link to run, not to a version under "
                            f".elsewhere.versions/; promote replaces only a deployed model it manages")
    (tmp_path / ".elsewhere.versions" / "v" / "inner").mkdir(parents=True)
    (tmp_path / "deeper").symlink_to(".elsewhere.versions/v/inner")        # not a version: inside one
    (tmp_path / ".deeper.versions").symlink_to(".elsewhere.versions")
    with pytest.raises(InputError, match="not to a version under"):
        swap.check_deployed_place(tmp_path / "deeper")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_text("")
    with pytest.raises(InputError) as e:
        swap.check_deployed_place(photos)
    assert str(e.value) == (f"--deployed {photos}: a directory that holds no model (model.safetensors is missing); "
                            f"promote replaces only a deployed model")
    assert users.read_text() == "mine" and (photos / "a.png").is_file()


def test_a_version_set_aside_is_renamed_beside_the_others(tmp_path):
    version = run_dir(tmp_path / ".deployed.versions" / "20260101T000000Z-a", "a")
    assert swap.mark_damaged(version) == version.with_name("20260101T000000Z-a" + DAMAGED)
    assert not version.exists() and (tmp_path / ".deployed.versions" / ("20260101T000000Z-a" + DAMAGED)).is_dir()


def test_a_swap_beside_one_paused_at_its_flip_waits_and_no_deployed_model_is_lost(tmp_path, monkeypatch):
    """Two swaps at once (a night's promote and a manual one): swap A pauses at its fault point
    `promote-versioned` while swap B runs. Without the lock beside the link, B completed and pruned
    A's new version, A then pointed the link at it (gone) and pruned the version before: nothing
    deployed. With it, B waits for A, and the link names B's version with A's kept before it."""
    import threading
    from edge_sel.engine import faults
    deployed = tmp_path / "deployed"
    swap.swap_in(run_dir(tmp_path / "first", "first"), deployed)
    paused, go_on = threading.Event(), threading.Event()
    point = faults.point

    def pause_a(name):
        if name == "promote-versioned" and threading.current_thread().name == "swap-a":
            paused.set()
            go_on.wait(30)
        point(name)
    monkeypatch.setattr(faults, "point", pause_a)
    done = {}
    a = threading.Thread(target=lambda: done.update(a=swap.swap_in(run_dir(tmp_path / "a", "a"), deployed)),
                         name="swap-a")
    a.start()
    assert paused.wait(30)
    b = threading.Thread(target=lambda: done.update(b=swap.swap_in(run_dir(tmp_path / "b", "b"), deployed)))
    b.start()
    b.join(2)                   # the old code's B finishes here; with the lock it waits for A
    go_on.set()
    a.join(30)
    b.join(30)
    assert set(done) == {"a", "b"}
    assert deployed.resolve() == done["b"] and contents(deployed)["model.safetensors"] == "b"
    kept = sorted(p.name for p in (tmp_path / ".deployed.versions").iterdir())
    assert kept == [done["a"].name, done["b"].name]
    assert not os.path.lexists(tmp_path / ".deployed.lock")     # there only while held


def test_the_deployed_lock_is_taken_once_per_thread_and_waited_for_by_another(tmp_path, capsys):
    import threading
    deployed = tmp_path / "deployed"
    order = []

    def other_thread():
        with swap.deployed_lock(deployed):
            order.append("other")
    with swap.deployed_lock(deployed, create=True):
        with swap.deployed_lock(deployed):          # nested: no wait on itself
            other = threading.Thread(target=other_thread)
            other.start()
            other.join(1)
            order.append("first")
    other.join(10)
    assert order == ["first", "other"]
    assert "waiting for another command changing --deployed" in capsys.readouterr().err


def test_two_first_promotes_where_the_deployed_folder_is_not_yet_made_deploy_one(tmp_path, monkeypatch):
    """Issue [hardening], item 9: with no parent folder there was no lock to take, so two first
    promotes at once both judged "first" and both deployed. Both judge before either swaps here (a
    barrier); the one that swaps second must find the other's model deployed and not deploy."""
    import threading
    from edge_sel.engine.night import promote as pr
    deployed = tmp_path / "device" / "deployed"
    runs = [run_dir(tmp_path / f"run{i}", f"w{i}") for i in range(2)]
    both_judged = threading.Barrier(2)
    judged: dict = {}

    def decide(run, place, *args):      # promote's rules as far as this needs them
        if judged.setdefault(threading.get_ident(), 0) == 0:
            both_judged.wait(30)
        judged[threading.get_ident()] += 1
        if (Path(place) / "model.safetensors").is_file():
            return pr.Decision(False, "other-start", "another model is deployed now")
        return pr.Decision(True, "first", "nothing was deployed")
    monkeypatch.setattr(pr, "decide", decide)
    monkeypatch.setattr(pr, "check_candidate", lambda run_dir: None)     # stand-in weights: the lock is tested
    rules = {}
    threads = [threading.Thread(target=lambda r=r: rules.update({r.name: pr.promote(r, deployed).rule})) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(rules.values()) == ["first", "other-start"], rules
    assert len(list(swap.versions_dir(deployed).iterdir())) == 1
