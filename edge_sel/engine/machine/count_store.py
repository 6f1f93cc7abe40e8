"""Counted steps kept on the device between runs: a count is a function of what its key names
(core/count_keys.py), so a nightly run on the same model, input size and settings reads the counts its
plan needs instead of running each step on the meta device again (Lite0 at 96 px under 1/4 of full
fine-tuning's peak: 24 counts, 5.6 s of a 1-epoch run's planning). Unlike a timing, a count does not
depend on the load the machine was under: nothing is provisional."""

from __future__ import annotations

from edge_sel.data.folder import cache_dir
from edge_sel.engine.machine.probe_cache import read_entries, write_entries

FILE = "counts.json"
MOST_ENTRIES = 4096     # the oldest go first beyond it (a few hundred bytes each)


class CountStore:
    """get(key) -> the kept count's fields, or None; put(key, fields) keeps them (the file is read
    again first, so runs started together each add theirs)."""

    def __init__(self, path=None):
        self.path = path or cache_dir() / FILE
        self._entries: dict | None = None

    def get(self, key: str) -> dict | None:
        if self._entries is None:
            self._entries = read_entries(self.path)     # none yet, or unreadable: count again
        entry = self._entries.get(key)
        # A count is whole non-negative bytes (a bool is no count): anything else is counted again.
        return entry if isinstance(entry, dict) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entry.values()) else None

    def forget(self) -> None:
        """The file is read again at the next get: another process (a measuring child) kept counts."""
        self._entries = None

    def put(self, key: str, fields: dict) -> None:
        entries = read_entries(self.path)
        entries.pop(key, None)
        entries[key] = fields
        while len(entries) > MOST_ENTRIES:
            entries.pop(next(iter(entries)))
        self._entries = entries
        write_entries(self.path, entries, "the count")
