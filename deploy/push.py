#!/usr/bin/env python3
"""Ship a warmup checkpoint (and ORT artifacts, and data) to a device; bring its run records back.

    deploy/push.py push jetson@orin.local --checkpoint runs/warmup [--artifacts runs/warmup/artifacts] [--data DIR]
    deploy/push.py pull jetson@orin.local --into device-runs/orin [--with-models]

TARGET is `[user@]host[:DIR]` (DIR defaults to /var/lib/edge-sel, the state directory of
deploy/systemd/edge-sel-finetune.service) or `local:DIR`, a directory on this machine (a mounted
device, or a test). On the device DIR holds checkpoints/NAME, artifacts/NAME, data/ and runs/.

Files travel as a tar stream over one ssh connection per transfer, so the device needs only ssh and
tar (no rsync). A pushed directory replaces the old one in one rename: a scheduled fine-tune never
reads half a checkpoint. EDGE_SEL_SSH sets the ssh command (default "ssh"), e.g.
EDGE_SEL_SSH="ssh -p 2222 -i ~/.ssh/device". --dry-run prints the commands and runs nothing.
Only the standard library is used: this runs on a workstation without edge-sel installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = "/var/lib/edge-sel"
RECORD_FILES = ("summary.json", "config.json", "metrics.jsonl", "metrics.csv")
MODEL_FILES = ("model.safetensors", "model.json")


class UsageError(Exception):
    pass


@dataclass(frozen=True)
class Target:
    host: str | None   # None: a local directory
    root: str

    @classmethod
    def parse(cls, text: str) -> "Target":
        if text.startswith("local:"):
            root = text[len("local:"):]
            if not root:
                raise UsageError("TARGET local: needs a directory, e.g. local:/mnt/device/edge-sel")
            return cls(None, str(Path(root).resolve()))
        host, _, root = text.partition(":")
        if not host or host.startswith("-"):
            raise UsageError(f"TARGET {text!r}: expected [user@]host[:DIR] or local:DIR")
        return cls(host, root or DEFAULT_DIR)

    def command(self, script: str) -> list[str]:
        """argv that runs a POSIX shell script on the device."""
        if self.host is None:
            return ["sh", "-c", script]
        ssh = shlex.split(os.environ.get("EDGE_SEL_SSH", "ssh"))
        return [*ssh, self.host, script]

    def where(self, path: str) -> str:
        return f"local:{path}" if self.host is None else f"{self.host}:{path}"


def _show(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _pipe(producer: list[str], consumer: list[str], dry_run: bool) -> None:
    """producer | consumer, failing if either side fails."""
    if dry_run:
        print(f"{_show(producer)} | {_show(consumer)}")
        return
    first = subprocess.Popen(producer, stdout=subprocess.PIPE)
    try:
        second = subprocess.run(consumer, stdin=first.stdout, check=False)
    finally:
        first.stdout.close()
        first_rc = first.wait()
    if first_rc != 0 or second.returncode != 0:
        failed = producer if first_rc != 0 else consumer
        raise RuntimeError(f"transfer failed ({_show(failed)} exited {first_rc or second.returncode})")


def send_directory(target: Target, source: Path, dest: str, dry_run: bool) -> None:
    """Copy the contents of `source` to `dest` on the device, replacing what was there at once."""
    if not source.is_dir():
        raise UsageError(f"{source}: not a directory")
    d = shlex.quote(dest)
    tmp = shlex.quote(dest + ".incoming")
    old = shlex.quote(dest + ".old")
    script = (f"set -e; rm -rf {tmp} {old}; mkdir -p {tmp}; tar -xf - -C {tmp}; "
              f"if [ -e {d} ]; then mv {d} {old}; fi; mv {tmp} {d}; rm -rf {old}")
    _pipe(["tar", "-cf", "-", "-C", str(source), "."], target.command(script), dry_run)
    if not dry_run:
        print(f"pushed {source} -> {target.where(dest)}")


def push(target: Target, checkpoint: Path | None, artifacts: Path | None, data: Path | None,
         name: str, dry_run: bool) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name in (".", ".."):
        raise UsageError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
    if checkpoint is None and artifacts is None and data is None:
        raise UsageError("push: nothing to send; give --checkpoint, --artifacts and/or --data")
    if checkpoint is not None and not (checkpoint / "model.safetensors").is_file():
        raise UsageError(f"--checkpoint {checkpoint}: no model.safetensors (not a checkpoint directory)")
    for source, where in ((checkpoint, f"checkpoints/{name}"), (artifacts, f"artifacts/{name}"),
                         (data, "data")):
        if source is not None:
            send_directory(target, source, f"{target.root}/{where}", dry_run)


def pull(target: Target, into: Path, with_models: bool, dry_run: bool) -> list[str]:
    """Fetch the record files of every run under DIR/runs into `into/RUN/`. Returns the runs now in `into`."""
    wanted = RECORD_FILES + (MODEL_FILES if with_models else ())
    names = " -o ".join(f"-name {shlex.quote(n)}" for n in wanted)
    runs = shlex.quote(f"{target.root}/runs")
    # find lists only what exists (a run still in progress has no summary.json yet).
    script = (f"set -e; [ -d {runs} ] || {{ echo no runs directory {runs} >&2; exit 3; }}; "
              f"cd {runs}; find . -mindepth 2 -maxdepth 2 -type f \\( {names} \\) | tar -cf - -T -")
    if not dry_run:
        into.mkdir(parents=True, exist_ok=True)
    _pipe(target.command(script), ["tar", "-xf", "-", "-C", str(into)], dry_run)
    if dry_run:
        return []
    runs_here = sorted(p.name for p in into.iterdir() if p.is_dir())
    print(f"runs in {into}:")
    for run in runs_here:
        state = "finished" if (into / run / "summary.json").is_file() else "in progress or stopped"
        print(f"  {run} ({state})")
    return runs_here


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="push.py", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("push", parents=[common], help="send a checkpoint, artifacts and/or data to the device")
    p.add_argument("target")
    p.add_argument("--checkpoint", type=Path, help="warmup checkpoint directory (model.safetensors)")
    p.add_argument("--artifacts", type=Path, help="ORT training artifacts directory")
    p.add_argument("--data", type=Path, help="image folder (one subfolder per class) for folder:DIR/data")
    p.add_argument("--name", default="warmup", help="name on the device: checkpoints/NAME [warmup]")
    q = sub.add_parser("pull", parents=[common], help="bring the device's run records back")
    q.add_argument("target")
    q.add_argument("--into", type=Path, required=True, help="local directory for the runs")
    q.add_argument("--with-models", action="store_true", help="also fetch each run's model files")
    args = parser.parse_args(argv)
    try:
        target = Target.parse(args.target)
        if args.command == "push":
            push(target, args.checkpoint, args.artifacts, args.data, args.name, args.dry_run)
        else:
            pull(target, args.into, args.with_models, args.dry_run)
    except UsageError as e:
        print(f"push.py: error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:
        print(f"push.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
