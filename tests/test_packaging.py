"""The shipped device profiles live in the top-level profiles/ folder; the build installs them into
the package. A wheel built from a clean copy of the repository and an editable install must both
load every one of them by name."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(REPO.glob("profiles/*.toml"))
NAMES = [p.stem for p in SHIPPED]

# Loads every shipped profile by name and says where the package and the profiles came from.
LOAD_ALL = """
import json, edge_sel.profiles as p
names = p.list_profiles()
print(json.dumps({"package": p.__file__, "names": names,
                  "files": [p.load_profile(n).file for n in names]}))
"""
# Put before LOAD_ALL for an unpacked wheel: the editable finder this environment may have would
# otherwise answer for any module the wheel lacks.
WITHOUT_EDITABLE_FINDER = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
"""


def _run(cmd, cwd, timeout, env=None):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory) -> Path:
    """The repository's tracked files (as they are in the working tree), nothing else."""
    dest = tmp_path_factory.mktemp("clean") / "src"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True,
                            timeout=30).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = REPO / rel
        if source.is_file():                  # tracked but deleted in the working tree: skip
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
    return dest


def _env_without_repo():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def test_repository_ships_profiles_from_the_top_level_folder():
    assert len(SHIPPED) >= 7 and "generic" in NAMES
    assert not list((REPO / "edge_sel" / "profiles").glob("*.toml"))   # one source of truth


@pytest.mark.slow
def test_wheel_from_a_clean_copy_carries_and_loads_every_profile(clean_copy, tmp_path):
    """Builds a wheel (pip, setuptools, no network, a few seconds)."""
    pytest.importorskip("setuptools")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--disable-pip-version-check", "-q", "-w", str(tmp_path / "dist"), str(clean_copy)],
         cwd=tmp_path, timeout=180)
    wheel, = (tmp_path / "dist").glob("edge_sel-*.whl")
    with zipfile.ZipFile(wheel) as z:
        for toml in SHIPPED:
            assert z.read(f"edge_sel/profiles/shipped/{toml.name}") == toml.read_bytes()
        z.extractall(tmp_path / "site")

    # The unpacked wheel is what an install puts in site-packages; no source tree beside it.
    env = _env_without_repo()
    env["PYTHONPATH"] = str(tmp_path / "site")
    seen = json.loads(_run([sys.executable, "-c", WITHOUT_EDITABLE_FINDER + LOAD_ALL], cwd=tmp_path,
                           timeout=60, env=env))
    assert Path(seen["package"]).is_relative_to(tmp_path / "site")
    assert seen["names"] == NAMES
    shipped_dir = tmp_path / "site" / "edge_sel" / "profiles" / "shipped"
    assert seen["files"] == [str(shipped_dir / f"{n}.toml") for n in NAMES]


def _venv_over_this_environment(venv: Path) -> Path:
    """A new virtual environment that sees this test run's packages (its setuptools included) and
    not the base interpreter's: `venv --system-site-packages` would see the base's, which in a
    fresh venv is an older setuptools than the environment's. Returns its python."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent, timeout=60)
    python = venv / "bin" / "python"
    inner = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                 cwd=venv.parent, timeout=60).strip()
    # Plain paths: the .pth files in them (an editable finder of this checkout) are not run.
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(inner) / "this_environment.pth").write_text("".join(f"{p}\n" for p in ours))
    return python


@pytest.mark.slow
def test_fresh_editable_install_of_a_clean_copy_loads_every_profile(clean_copy, tmp_path):
    """A PEP 660 editable install into a new virtual environment (a few seconds, no network),
    built with this environment's setuptools whatever the base interpreter has."""
    pytest.importorskip("setuptools")
    python = _venv_over_this_environment(tmp_path / "venv")
    import setuptools
    builder = _run([str(python), "-c", "import setuptools; print(setuptools.__file__)"], cwd=tmp_path, timeout=60,
                   env=_env_without_repo()).strip()
    assert Path(builder) == Path(setuptools.__file__)     # this environment's, not the base interpreter's
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-build-isolation", "--disable-pip-version-check", "-q", "-e", str(clean_copy)],
         cwd=tmp_path, timeout=180)
    seen = json.loads(_run([str(python), "-c", LOAD_ALL], cwd=tmp_path, timeout=60,
                           env=_env_without_repo()))
    assert Path(seen["package"]).is_relative_to(clean_copy)
    assert seen["names"] == NAMES
    assert seen["files"] == [str(clean_copy / "profiles" / f"{n}.toml") for n in NAMES]


def test_editable_install_lists_and_loads_every_profile(tmp_path):
    # Run from elsewhere so that only the installed package can answer.
    where = _run([sys.executable, "-c", "import edge_sel; print(edge_sel.__file__)"],
                 cwd=tmp_path, timeout=60, env=_env_without_repo()).strip()
    if not Path(where).is_relative_to(REPO):
        pytest.skip(f"edge_sel is installed from {where}, not as an editable install of {REPO}")
    seen = json.loads(_run([sys.executable, "-c", LOAD_ALL], cwd=tmp_path, timeout=60,
                           env=_env_without_repo()))
    assert seen["names"] == NAMES
    assert seen["files"] == [str(REPO / "profiles" / f"{n}.toml") for n in NAMES]

    script = Path(sys.executable).with_name("edge-sel")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "edge_sel"]
    listed = _run([*command, "profiles", "list"], cwd=tmp_path, timeout=60, env=_env_without_repo())
    assert [line.split()[0] for line in listed.splitlines()] == NAMES
