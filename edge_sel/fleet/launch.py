"""Flower's deployment engine on this machine: one SuperLink and N SuperNodes on 127.0.0.1, then
`flwr run`. Every process starts in its own session; at the end the process groups of all of them
and of everything they started are stopped, whatever happened."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from edge_sel.errors import InputError
from edge_sel.fleet.settings import ServerSettings
from edge_sel.threads import usable_cpus

LOOPBACK = "127.0.0.1"
APP_COMPONENTS = {"serverapp": "edge_sel.fleet.server_app:app", "clientapp": "edge_sel.fleet.client_app:app"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def node_config_arg(config: dict) -> str:
    """A --node-config string: space-separated key=value pairs with TOML values."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in config.items())


def write_app(directory: Path, defaults: ServerSettings | None = None) -> Path:
    """The Flower app: a pyproject naming edge-sel's ServerApp and ClientApp and every run-config key
    (installed edge-sel provides the code; nothing is installed at run time)."""
    from edge_sel.version import __version__
    directory.mkdir(parents=True, exist_ok=True)
    run_config = (defaults or ServerSettings()).to_run_config()
    lines = ["[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
             "[project]", 'name = "edge-sel-fleet"', f'version = "{__version__.split("+")[0]}"',
             'description = "edge-sel fleet fine-tuning"', 'license = "Apache-2.0"',
             'dependencies = ["edge-sel[fleet]"]', "", "[tool.flwr.app]", 'publisher = "edge-sel"', "",
             "[tool.flwr.app.components]",
             *(f'{k} = "{v}"' for k, v in APP_COMPONENTS.items()), "", "[tool.flwr.app.config]",
             *(f'{k} = {toml_value(v)}' for k, v in run_config.items()), ""]
    (directory / "pyproject.toml").write_text("\n".join(lines))
    return directory


def write_run_config(path: Path, settings: ServerSettings) -> Path:
    """The run's settings as a TOML file for `flwr run --run-config FILE` (key=value pairs on the
    command line are split at spaces, which a path or a JSON value may hold)."""
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in settings.to_run_config().items()))
    return path


def write_connection(flwr_home: Path, address: str, root_certificates: str | None = None) -> None:
    """The `flwr` CLI's SuperLink connection "edge" in a private FLWR_HOME."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    tls = f'root-certificates = "{root_certificates}"' if root_certificates else "insecure = true"
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "edge"\n\n[superlink.edge]\naddress = "{address}"\n{tls}\n')


def flower_env(flwr_home: Path, nodes_here: int = 1) -> dict:
    """No telemetry, no update checks, no dependency installs; the Flower commands (which start
    `flower-superexec` by name) found next to this Python. SuperNodes sharing this host share its
    CPUs: each trains on its share of them, waiting passively (unless the user set either)."""
    env = dict(os.environ)
    if nodes_here > 1:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.setdefault("EDGE_SEL_THREADS", str(max(1, usable_cpus() // nodes_here)))
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_HOME": str(flwr_home),
                "PYTHONUNBUFFERED": "1"})
    return env


def flower_command(name: str) -> str:
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise InputError(f"{name}: not found next to {sys.executable} or on PATH; "
                         f"install the extra: pip install edge-sel[fleet]")
    return found


class Stopped(Exception):
    """SIGTERM or SIGHUP arrived: the fleet is stopped like at any other exit."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum          # the shell's convention: 143 for SIGTERM, 129 for SIGHUP
        super().__init__(f"stopped by {signal.Signals(signum).name}")


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGHUP)):
    """Turn the first SIGTERM/SIGHUP into Stopped, so the `with LoopbackFleet` around it stops every
    process group (a default handler would end this process and leave Flower's running). Later
    signals are ignored until then: they must not interrupt the stopping."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum, frame):
        if not raised:
            raised.append(signum)
            raise Stopped(signum)

    old = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


class LoopbackFleet:
    """`with LoopbackFleet(work, node_configs) as fleet: fleet.run(settings)`."""

    def __init__(self, work: Path, node_configs: list[dict], startup_timeout: float = 60.0):
        self.work = Path(work).absolute()         # flwr runs inside it: a relative path would name logs/logs
        self.node_configs = node_configs
        self.startup_timeout = startup_timeout
        self.flwr_home = self.work / "flwr-home"
        self.env = flower_env(self.flwr_home, len(node_configs))
        self.procs: list[subprocess.Popen] = []
        self.seen: dict[int, int] = {}          # pid -> process group of every process seen
        self.port = None

    def _start(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.work / log_name, "wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.work,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)
        self.seen[proc.pid] = proc.pid
        return proc

    def __enter__(self) -> "LoopbackFleet":
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self.port = free_port()
            self._start([flower_command("flower-superlink"), "--insecure",
                         "--disable-runtime-dependency-installation", "--host", LOOPBACK,
                         "--port", str(self.port), "--database", str(self.work / "superlink.db")],
                        "superlink.log")
            self._wait_for_port(self.port)
            for i, config in enumerate(self.node_configs):
                self._start([flower_command("flower-supernode"), "--insecure", "--superlink",
                             f"{LOOPBACK}:{self.port}", "--host", LOOPBACK, "--port", str(free_port()),
                             "--node-config", node_config_arg(config)], f"supernode-{i}.log")
            write_connection(self.flwr_home, f"{LOOPBACK}:{self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_for_port(self, port: int) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            self._watch()
            if self.procs[0].poll() is not None:
                raise RuntimeError(f"flower-superlink exited with {self.procs[0].returncode}; "
                                   f"see {self.work / 'superlink.log'}")
            with socket.socket() as s:
                if s.connect_ex((LOOPBACK, port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"flower-superlink did not listen on {LOOPBACK}:{port} within {self.startup_timeout:.0f} s")

    def _watch(self) -> None:
        """Note every descendant and its process group (Flower starts some in sessions of their own)."""
        for proc in self.procs:
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    self.seen.setdefault(child.pid, os.getpgid(child.pid))
            except (psutil.Error, ProcessLookupError):
                continue

    def run(self, settings: ServerSettings, app_dir: Path | None = None, timeout: float = 3600.0,
            echo=None) -> int:
        """`flwr run APP edge --stream` with the settings as run config; its exit status."""
        app = write_app(app_dir or self.work / "app")
        overrides = write_run_config(self.work / "run-config.toml", settings)
        proc = self._start([flower_command("flwr"), "run", str(app), "edge", "--stream",
                            "--run-config", str(overrides)], "flwr-run.out")
        deadline = time.monotonic() + timeout
        # `flwr run --stream` can return while the ServerApp still runs (its log stream ended):
        # the run is over when the ServerApp process is.
        while proc.poll() is None or self._server_app_running():
            self._watch()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the fleet run did not finish within {timeout:.0f} s")
            time.sleep(0.5)
        if echo is not None:
            echo((self.work / "flwr-run.out").read_text(errors="replace"))
        return proc.returncode

    def _server_app_running(self) -> bool:
        for pid in list(self.seen):
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE and any("flwr-serverapp" in part for part in p.cmdline()):
                    return True
            except psutil.Error:
                continue
        return False

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM to every process group seen, then SIGKILL to whatever is left. A signal to this
        process meanwhile waits until every group is stopped."""
        blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self._stop(grace_s)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _stop(self, grace_s: float) -> None:
        self._watch()
        groups = {g for g in self.seen.values() if g != os.getpgrp()}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for group in groups:
                try:
                    os.killpg(group, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and self.alive():
                for proc in self.procs:
                    proc.poll()          # reap our own children, or they linger as zombies
                time.sleep(0.1)
            if not self.alive():
                break
        for proc in self.procs:
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass

    def alive(self) -> list[int]:
        """Process groups seen that still hold a process."""
        out = []
        for group in set(self.seen.values()):
            try:
                os.killpg(group, 0)
                out.append(group)
            except ProcessLookupError:
                pass
            except PermissionError:
                out.append(group)
        return out
