"""A fleet run on a SuperLink elsewhere, driven with Flower's own CLI: submit it, follow its log,
stop it (on --timeout, SIGTERM, SIGHUP or Ctrl-C the ServerApp is stopped too, not only the log
stream), and read how it ended."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from edge_sel.errors import InputError
from edge_sel.fleet.launch import flower_command

CONNECTION = "edge"         # the connection write_connection names in the private FLWR_HOME


class NoAnswer(Exception):
    """The SuperLink did not answer a `flwr` command in time (a host that is down or hung)."""


def _flwr(args: list[str], env: dict, timeout: float = 120.0) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([flower_command("flwr"), *args], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NoAnswer(f"the SuperLink did not answer `flwr {args[0]}` within {timeout:.0f} s") from None


def _json_in(text: str) -> dict:
    """The JSON object `flwr ... --format json` prints (after any other line)."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object")
    return json.JSONDecoder().raw_decode(text[start:])[0]


def _last_line(p: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (p.stderr + p.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit {p.returncode}"


def submit(app: Path, run_config: Path, env: dict) -> int:
    """Start the run on the SuperLink; its run id. A SuperLink that cannot be reached or does not
    answer is the --superlink given: one line, exit 2, as for any other refusal to start."""
    try:
        p = _flwr(["run", str(app), CONNECTION, "--run-config", str(run_config), "--format", "json"], env)
    except NoAnswer as e:
        raise InputError(f"--superlink: the run was not started ({e})") from None
    try:
        reply = _json_in(p.stdout)
        if p.returncode == 0 and reply.get("success") and reply.get("run-id"):
            return int(reply["run-id"])
    except ValueError:
        pass
    raise InputError(f"--superlink: the run was not started ({_last_line(p)})")


def follow(run_id: int, env: dict, timeout: float) -> None:
    """The run's log on this terminal until the run ends. Raises subprocess.TimeoutExpired after
    `timeout` seconds (the log stream is stopped; the run is not: see stop)."""
    with subprocess.Popen([flower_command("flwr"), "log", str(run_id), CONNECTION, "--stream"], env=env) as log:
        try:
            log.wait(timeout=timeout)
        finally:
            if log.poll() is None:
                log.terminate()
                try:
                    log.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    log.kill()


def stop(run_id: int, env: dict) -> str:
    """Ask the SuperLink to stop the run (its ServerApp and the clients' work); Flower's answer."""
    try:
        return _last_line(_flwr(["stop", str(run_id), CONNECTION], env, timeout=60))
    except NoAnswer as e:
        return str(e)


def describe(run_id: int, env: dict) -> dict:
    """The run as `flwr ls --format json` lists it ("status", "status-details", "running-at", ...);
    {"status": "unknown", "status-details": why} when the SuperLink does not say."""
    try:
        p = _flwr(["ls", "--run-id", str(run_id), CONNECTION, "--format", "json"], env)
    except NoAnswer as e:
        return {"status": "unknown", "status-details": str(e)}
    try:
        runs = _json_in(p.stdout).get("runs") or []
    except ValueError:
        return {"status": "unknown", "status-details": _last_line(p)}
    return runs[0] if runs else {"status": "unknown", "status-details": f"the SuperLink lists no run {run_id}"}


def status(run_id: int, env: dict) -> tuple[str, str]:
    """(status, details), e.g. ("finished:failed", "ServerApp failed with exception: ...")."""
    run = describe(run_id, env)
    return str(run.get("status", "unknown")), str(run.get("status-details") or "")
