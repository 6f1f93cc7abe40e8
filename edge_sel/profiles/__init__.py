"""Device profiles: per-device defaults for a run (device, precision, batch size, meters and
rails, thermal limit, strategy, energy budget), loaded from TOML and validated strictly.

The shipped profiles are the `*.toml` files of the repository's top-level `profiles/` folder.
The build copies them into the package as `edge_sel/profiles/shipped/` (setup.py maps that
sub-package onto the folder), so that a `pip install` carries them.

    load_profile("jetson-orin-nano")   # a shipped profile
    load_profile("auto")               # the shipped profile that fits this machine
    load_profile("./my-board.toml")    # a file; `extends = "NAME"` starts from a shipped one
"""

from __future__ import annotations

import difflib

import sys
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from edge_sel.errors import InputError
from edge_sel.profiles.detect import Detection, detect
from edge_sel.profiles.schema import check_combination, check_table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6's system Python)
    import tomli as tomllib


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    file: str = ""                           # where it was read from
    detected: str | None = None              # why `auto` chose it
    # [train]
    device: str | None = None
    precision: str | None = None             # auto | fp32 | bf16 | fp16 (--precision; "mixed" = auto)
    batch_size: int | None = None
    cpu_threads: int | None = None           # torch intra-op threads
    memory_budget_mb: float | None = None    # --memory-budget: what a training step may keep (MiB)
    # [method]
    strategy: str | None = None
    target_activation: float | None = None
    sparsity: str | None = None
    # [energy]
    meters: tuple[str, ...] | None = None    # () or absent: automatic choice
    rails: tuple[str, ...] | None = None     # Jetson rails that make the module total
    watts_per_core: float | None = None      # for the labelled estimate
    budget_j: float | None = None            # per run
    budget_per_epoch_j: float | None = None  # drives the gates' target activation
    # [thermal]
    max_temp_c: float | None = None
    hysteresis_c: float | None = None

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def settings(self) -> dict[str, Any]:
        """The values this profile sets (absent keys left out)."""
        skip = {"name", "description", "file", "detected"}
        return {k: v for k, v in self.to_json().items() if k not in skip and v is not None}


def _shipped_dir():
    """Where the shipped profiles are: inside the package when installed from a wheel, else the
    top-level `profiles/` of the source tree (an editable install or a plain checkout)."""
    installed = resources.files(__name__) / "shipped"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "profiles"


def list_profiles() -> list[str]:
    return sorted(p.name[:-len(".toml")] for p in _shipped_dir().iterdir() if p.name.endswith(".toml"))


def _parse(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{where}: not valid TOML ({e})") from None
    except RecursionError:
        raise InputError(f"{where}: not valid TOML (nested too deeply)") from None


def near_miss(name: str, names: list[str]) -> str | None:
    """The one name `name` was most likely meant to be: a typo (difflib) or a unique prefix."""
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.8)
    if close:
        return close[0]
    starting = [n for n in names if n.startswith(name)] if len(name) >= 3 else []
    return starting[0] if len(starting) == 1 else None


def _read_values(name_or_path: str, chain: tuple[str, ...] = ()) -> tuple[dict, str]:
    """Validated values of one profile with its `extends` chain merged; and the file it came from."""
    if _is_path(name_or_path):
        path = Path(name_or_path)
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"--profile {where}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--profile {where}: cannot read ({e})") from None
        default_name = path.stem
    else:
        if name_or_path not in list_profiles():
            close = near_miss(name_or_path, [*list_profiles(), "auto"])
            hint = f"did you mean {close}? " if close else ""
            raise InputError(f"--profile {name_or_path}: no such profile; {hint}choose one of "
                             f"{', '.join(list_profiles())}, auto, or a .toml file")
        where = f"{name_or_path}.toml"
        resource = _shipped_dir() / where
        text = resource.read_text(encoding="utf-8")
        path, default_name = resource, name_or_path
    values = check_table(_parse(text, where), where)
    values.setdefault("name", default_name)
    base = values.pop("extends", None)
    if base is not None:
        if f"{base}.toml" in chain + (where,):
            raise InputError(f"{where}: extends: {base!r} leads back to itself")
        if base not in list_profiles():
            close = near_miss(str(base), list_profiles())
            raise InputError(f"{where}: extends: no shipped profile {base!r}; "
                             + (f"did you mean {close!r}? " if close else "") + "choose one of "
                             f"{', '.join(list_profiles())}")
        inherited, _ = _read_values(base, chain + (where,))
        inherited.pop("name", None)
        inherited.pop("description", None)
        values = {**inherited, **values}
    check_combination(values, where)
    return values, str(path)


def _is_path(value: str) -> bool:
    return value.endswith(".toml") or "/" in value or "\\" in value


def load_profile(spec: str, root=None, cuda_probe=None) -> Profile:
    """A profile by shipped name, "auto", or file path. Raises InputError naming the file and key."""
    spec = str(spec)
    detection: Detection | None = None
    if spec == "auto":
        detection = detect(root) if cuda_probe is None else detect(root, cuda_probe)
        spec = detection.name
    values, file = _read_values(spec)
    known = {f.name for f in fields(Profile)}
    assert set(values) <= known, set(values) - known   # the schema and the dataclass agree
    return Profile(file=file, detected=detection.reason if detection else None, **values)


__all__ = ["Detection", "Profile", "detect", "list_profiles", "load_profile"]
