"""The model files this machine's user trusts: each a path and the SHA-256 of its content, recorded
when a pretrain named the file (`--model path/file.py:callable`), so a later command may rebuild a
checkpoint made from it without asking again. A card's own digest proves nothing (whoever wrote the
card computed it); only this list, kept on the user's machine, does.

The list lives at $EDGE_SEL_TRUST_FILE when set, else $XDG_CONFIG_HOME/edge-sel/trusted-model-files.json
(~/.config when XDG_CONFIG_HOME is unset).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from edge_sel.errors import InputError, read_json

TRUST_FILE_ENV = "EDGE_SEL_TRUST_FILE"
FORMAT = "edge-sel-trusted-model-files/1"


def trust_file() -> Path:
    named = os.environ.get(TRUST_FILE_ENV, "").strip()
    if named:
        return Path(named).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME", "").strip() or str(Path.home() / ".config")
    return Path(config) / "edge-sel" / "trusted-model-files.json"


def trusted_entries() -> list[dict]:
    """The recorded (path, sha256) pairs; none when the list does not exist yet."""
    path = trust_file()
    if not path.exists():
        return []
    try:
        doc = read_json(path)
        entries = doc["files"] if isinstance(doc, dict) and doc.get("format") == FORMAT else None
        if not isinstance(entries, list) or not all(
                isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("sha256"), str)
                for e in entries):
            raise ValueError(f"not a {FORMAT} list")
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: the list of trusted model files is unreadable ({e.__class__.__name__}: {e}); "
                         f"remove it (pretrain with --model records it again)") from None
    return entries


def is_trusted(file: str, sha256: str) -> bool:
    """Whether the user named this very file, with this very content, on this machine."""
    return {"path": file, "sha256": sha256} in trusted_entries()


def remember(file: str, sha256: str) -> None:
    """Record a file the user named (written to a temporary sibling and renamed into place, so a
    crash leaves the old list or the new one)."""
    entries = trusted_entries()
    entry = {"path": file, "sha256": sha256}
    if entry in entries:
        return
    path = trust_file()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".trusted-", dir=path.parent)      # readable by the user alone
        with os.fdopen(fd, "w") as f:
            json.dump({"format": FORMAT, "files": [*entries, entry]}, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise InputError(f"{path}: cannot record the trusted model file {file} ({e.strerror or e}); set "
                         f"{TRUST_FILE_ENV} to a writable place") from None
