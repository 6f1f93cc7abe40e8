"""Root-aware sysfs reads.

Every sensor file is read through one `Sysfs` object so that tests (and users debugging a
dump of a real device) can point the whole energy layer at another tree with
`EDGE_SEL_SYSFS_ROOT` or `root=`.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "EDGE_SEL_SYSFS_ROOT"


class Sysfs:
    """Reads files below `root` ("/" unless `root=` or `EDGE_SEL_SYSFS_ROOT` says otherwise)."""

    def __init__(self, root: str | os.PathLike | None = None):
        if root is None:
            root = os.environ.get(ROOT_ENV) or "/"
        self.root = Path(root)

    def path(self, real_path: str) -> Path:
        """Where the real `/sys/...` path lives under this root."""
        return self.root / real_path.lstrip("/")

    def glob(self, pattern: str) -> list[Path]:
        return sorted(self.root.glob(pattern.lstrip("/")))

    def shown(self, path: Path) -> str:
        """The path as it is called on the device, for messages."""
        try:
            return "/" + str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    # Sysfs attributes are tiny text files ending in a newline; plain open() is the cheapest read.
    def read_text(self, path: Path) -> str:
        with open(path, "r", encoding="ascii", errors="replace") as f:
            return f.read().strip()

    def read_int(self, path: Path) -> int:
        return int(self.read_text(path))

    def read_optional(self, path: Path) -> str | None:
        """The file's text, or None when it does not exist or cannot be read."""
        try:
            return self.read_text(path)
        except OSError:
            return None
