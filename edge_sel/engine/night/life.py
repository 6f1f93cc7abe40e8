"""One night of a device's life, the one place that says what a night does (`edge-sel night`, the
systemd script through it, and `bench lifelong` all call `night`):

0. a deployed model that no longer loads (weights, card or bank damaged) is set aside and the
   version before it deployed again (the warmup serves when none loads);
1. the latest run under RUNS, when it was cut off (a state checkpoint and no summary, or a summary
   that says `interrupted`), is resumed; a resume refused as bad input (its starting checkpoint
   changed, its files no longer fit) would fail the same way every night, so that run is set aside
   as `RUN.abandoned` (kept) and the night goes on to 2;
2. otherwise a new run directory, named by the UTC start time, fine-tunes the deployed model on
   tonight's data (the warmup checkpoint while nothing is deployed);
3. a finished run (all epochs, its strategy's end, or its energy budget) is judged by promote,
   which replaces the deployed model only when the rule says so.

A stop signal during training ends the night with the run checkpointed (130/143; the next night
resumes it). Bad input raises InputError, a failed write WriteError; nothing else is caught."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection

from edge_sel.config import NIGHT_BN_CONDITIONS, TrainConfig
from edge_sel.core.checkpoint import atomic_write_bytes
from edge_sel.core.outputs import refuse_onto_inputs
from edge_sel.engine.night import journal
from edge_sel.engine.night.deployed_swap import deployed_lock, versions_dir
from edge_sel.engine.machine.device import pick_device
from edge_sel.engine.machine.energy_setup import EnergyOptions
from edge_sel.engine.night.promote import Decision, promote, repair_deployed, validate_deployed
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import finetune, prepare_finetune_config, resume
from edge_sel.engine.runs.signals import exit_code_for
from edge_sel.errors import InputError, InUseError, WriteError, read_json

RUN_NAME = re.compile(r"\d{8}T\d{6}Z")       # a run named by its UTC start time
ABANDONED = ".abandoned"


@dataclass(frozen=True)
class Home:
    """Where a device keeps its runs and models."""
    runs: Path
    deployed: Path      # the model in use: a link to a versioned directory (engine/night/deployed_swap.py)
    warmup: Path        # the server's checkpoint, the start while nothing is deployed
    # How the user set each place ("--runs", "EDGE_SEL_RUNS", "--home"), so an error names that.
    said: dict = field(default_factory=dict, compare=False)

    @classmethod
    def at(cls, home: Path, runs: Path | None = None, deployed: Path | None = None,
           warmup: Path | None = None, said: dict | None = None) -> "Home":
        home = Path(home)
        return cls(Path(runs) if runs else home / "runs",
                   Path(deployed) if deployed else home / "checkpoints" / "deployed",
                   Path(warmup) if warmup else home / "checkpoints" / "warmup", dict(said or {}))

    def named(self, place: str) -> str:
        return self.said.get(place, f"--{place}")

    def check_runs_writable(self) -> None:
        """Tonight's run directory goes under RUNS: a place that cannot take it is named as the
        user set it (not as the run's --out, which they never typed)."""
        nearest = self.runs      # checked, not created: a night refused later must leave nothing behind
        while not nearest.exists() and nearest != nearest.parent:
            nearest = nearest.parent
        if not nearest.is_dir():
            raise InputError(f"{self.named('runs')} {self.runs}: cannot create ({nearest} is not a directory)")
        if not os.access(nearest, os.W_OK | os.X_OK):
            raise InputError(f"{self.named('runs')} {self.runs}: cannot write in {nearest} (read-only or not "
                             f"permitted)")

    def start_checkpoint(self) -> Path:
        """The model a new run fine-tunes: the deployed one, else the warmup."""
        if (self.deployed / "model.safetensors").is_file():
            return self.deployed
        if not (self.warmup / "model.safetensors").is_file():
            raise InputError(f"{self.named('warmup')} {self.warmup}: no checkpoint there (model.safetensors is "
                             f"missing), and nothing is deployed at {self.named('deployed')} {self.deployed}")
        return self.warmup


@dataclass
class NightResult:
    """What a night did. `exit_status`: 0 the night's work is done (promoted, or judged and not
    promoted), 130/143 a stop signal ended the fine-tune (checkpointed; the next night resumes it)."""
    run_dir: Path
    summary: dict
    decision: Decision | None            # None when the run did not finish tonight
    exit_status: int
    resumed: bool = False                # tonight finished a run cut off on an earlier night
    start: Path | None = None            # the checkpoint a new run started from
    abandoned: Path | None = None        # a run that could not be resumed, set aside tonight
    cost: dict = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return bool(self.decision and self.decision.promote)

    @property
    def rule(self) -> str | None:
        return self.decision.rule if self.decision else None


def night(home: Home, data: DataOptions, cfg: TrainConfig, energy: EnergyOptions | None = None,
          profile: dict | None = None, *, run_name: str | None = None, quiet: bool = False,
          say: Callable[[str], None] | None = None,
          trained: Callable[[dict], None] | None = None, given: Collection[str] | None = None) -> NightResult:
    """One night (see the module's docstring). `cfg`, `energy`: tonight's fine-tune options (copied,
    never changed); `profile`: what a device profile applied; `run_name`: the new run's directory
    name instead of the UTC start time (a benchmark's own); `say`: the journal's lines (default:
    stdout, flushed, unless `quiet`); `trained(summary)`: called once the fine-tune or resume has
    returned, before promote (the command line prints the run's closing lines there); `given`: the
    fields the user set (options, environment, profile), the only ones a resume names (None: all)."""
    say = say or (_silent if quiet else _print)
    cfg = prepare_finetune_config(copy.deepcopy(cfg), quiet)      # bad options fail before anything is touched
    energy = copy.deepcopy(energy or EnergyOptions()).validate()
    if run_name is not None and (not run_name or Path(run_name).name != run_name or run_name.endswith(ABANDONED)):
        raise InputError(f"run name {run_name!r}: must be a plain directory name")
    summary, run_dir, resumed, abandoned, start = None, None, False, None, None
    # What serves is settled first: a resumed run is judged against it too.
    repair_deployed(home.deployed)
    with deployed_lock(home.deployed):
        roll_back_damaged_deployed(home, say)
    latest = latest_run(home.runs)
    if latest is not None and unfinished(latest):
        say(f"edge-sel nightly: resuming {latest} with the options and data it started with (its config.json); "
            f"tonight's are set aside{set_aside_said(latest, cfg, data, given)}")
        try:
            summary = resume(latest, quiet, phase="finetune")
            run_dir, resumed = latest, True
        except (InUseError, WriteError):
            raise       # another night writing it (theirs), or a full disk: the run itself is fine
        except InputError as e:
            abandoned = set_aside(latest)
            say(f"edge-sel nightly: {latest} cannot be resumed ({e}); kept as {abandoned}, starting a new run")
        except Exception as e:      # anything else may be the run's own fault: N strikes, then set aside
            tries = count_failed_resume(latest, e)
            if tries < RESUME_TRIES:
                say(f"edge-sel nightly: resuming {latest} failed ({e.__class__.__name__}: {e}); "
                    f"try {tries} of {RESUME_TRIES}, the next night tries again")
                raise
            abandoned = set_aside(latest)
            say(f"edge-sel nightly: resuming {latest} failed {tries} nights running ({e.__class__.__name__}: {e}); "
                f"kept as {abandoned}, starting a new run")
    if summary is None:
        data.check()                # tonight's data and device: refused before a run is announced
        pick_device(cfg.device)
        home.check_runs_writable()
        start = home.start_checkpoint()
        set_aside_damaged_bank(start, say)
        if cfg.bn_conditions is None:       # the night's default: statistics per condition where they can be kept
            cfg.bn_conditions = 0 if cfg.bn_stats in ("frozen", "reestimate") else conditions_for(start, cfg.backend)
            if cfg.bn_conditions and cfg.bn_adapt:      # asked for: one set re-estimated, not the bank
                cfg.bn_conditions = 0
                say(f"edge-sel nightly: BatchNorm statistics per condition are off tonight: --bn-adapt "
                    f"{cfg.bn_adapt} re-estimates one set instead")
        run_dir = home.runs / (run_name or new_run_name(home.runs))
        refuse_onto_inputs(run_dir, [(home.named("deployed"), home.deployed),
                                     (home.named("deployed"), versions_dir(home.deployed)),
                                     (home.named("warmup"), home.warmup)], home.named("runs"))
        say(f"edge-sel nightly: new run {run_dir} from {start}")
        summary = finetune(start, data, cfg, run_dir, quiet=quiet, energy=energy, profile=profile)
    if trained is not None:
        trained(summary)
    if summary.get("stop_reason") == "interrupted":
        status = exit_code_for(getattr(signal, summary.get("stop_signal") or "SIGINT"))
        return NightResult(run_dir, summary, None, status, resumed, start, abandoned, night_cost(summary, None))
    decision = promote(run_dir, home.deployed, evaluate=metered_validation(energy))
    return NightResult(run_dir, summary, decision, 0, resumed, start, abandoned, night_cost(summary, decision))


def roll_back_damaged_deployed(home: Home, say) -> None:
    """A deployed model that no longer loads (card, weights or bank damaged): the version before it (by
    number) serves again, or the warmup; each version found not to load is set aside whole, never changed in
    place. When the warmup's model does not load either, the fault is not the versions': no change."""
    from edge_sel.engine.night.deployed_swap import mark_damaged, other_versions, roll_back
    deployed = home.deployed
    if not deployed.is_symlink() or not deployed.exists():
        return
    why = load_error(deployed)
    if why is None:
        return
    failed, back = [], None
    for version in other_versions(deployed):
        if load_error(version) is None:
            back = version
            break
        failed.append(version)
    if back is None and load_error(home.warmup, with_bank=False) is not None:
        return
    was = deployed.resolve()
    try:
        roll_back(deployed, back)
        for version in failed:
            mark_damaged(version)
    except OSError as e:
        raise WriteError(f"--deployed {deployed}: cannot roll back a damaged model ({e.strerror or e})") from None
    try:
        journal.append(deployed, "rolled-back", version=None if back is None else str(back), previous=str(was),
                       why=f"does not load: {why}", by="night", set_aside=[str(v) for v in failed])
    except OSError:
        pass                    # the roll back stands; the journal on a read-only disk cannot say so
    say(f"edge-sel nightly: the deployed model does not load ({why}); set aside, "
        + (f"the version before it is deployed again ({back.name})" if back else "the warmup serves"))


def load_error(checkpoint: Path, with_bank: bool = True) -> str | None:
    """Why `checkpoint` does not load as it serves (weights, card, and the bank it keeps), or None."""
    from edge_sel.core.bn_bank import read_bank
    from edge_sel.models import load_checkpoint
    try:
        model, card = load_checkpoint(checkpoint)
        if with_bank:
            read_bank(Path(checkpoint), list(card.input_shape), model)
    except InputError as e:
        return str(e)
    return None


# Like "auto": the run's own choice (measured, or sized to its images), never set aside.
RUN_CHOOSES = {"eval_batch_size": 0, "bn_stats": None, "bn_momentum": None, "val_subset": 0, "val_share": 0.0}


def set_aside_said(run_dir: Path, cfg: TrainConfig, data: DataOptions, given: Collection[str] | None = None) -> str:
    """Which of tonight's settings differ from those the resumed run keeps: ' (--epochs 3, not 5)';
    with `given`, only those fields are tonight's settings (the rest are defaults nobody chose)."""
    try:
        saved = read_json(run_dir / "config.json")
    except (OSError, ValueError):
        return ""
    if not isinstance(saved, dict):
        return ""
    tonight = {**cfg.to_json(), "data": dataclasses.asdict(data)}
    differ = []
    for key, value in tonight.items():
        if key in ("explicit", "method", "bn_conditions", "choice") or key not in saved:
            continue     # bookkeeping, or decided by the night itself
        kept = saved[key]
        nested = key == "data" and isinstance(kept, dict)
        for name, now in value.items() if nested else [(key, value)]:
            before = kept.get(name) if nested else kept
            chosen_by_run = name in ("subset_seed", "crop_pad") or now == "auto" or RUN_CHOOSES.get(name, "auto") == now
            if (given is None or name in given) and not chosen_by_run and str(now) != str(before):
                differ.append(f"--{name.replace('_', '-')} {now}, not {before}")
    return f" ({'; '.join(differ)})" if differ else ""


def set_aside_damaged_bank(start: Path, say) -> None:
    """A damaged bank beside the start's weights (the warmup's; a deployed version's only when nothing
    else loads) would stop every night: renamed BANK.damaged, the model serves with its own statistics."""
    from edge_sel.core.bn_bank import BANK_FILE, read_bank
    from edge_sel.models import load_checkpoint
    if not (start / BANK_FILE).is_file():
        return
    model, card = load_checkpoint(start)
    try:
        read_bank(start, list(card.input_shape), model)
    except InputError as e:
        kept = start / (BANK_FILE + ".damaged")
        (start / BANK_FILE).replace(kept)
        say(f"edge-sel nightly: {e}; set aside as {kept.name}: the model serves with its own statistics "
            f"and tonight starts a new bank")


def conditions_for(start: Path, backend: str) -> int:
    """How many conditions a night keeps BatchNorm statistics for when not told: NIGHT_BN_CONDITIONS
    for a start checkpoint with its source memory (the source's condition is estimated on its
    anchors) and BatchNorm layers, trained by the torch backend; else none."""
    from edge_sel.core.source_memory import has_source_memory
    from edge_sel.engine.evaluation.bn_bank import named_batchnorm
    from edge_sel.models import load_checkpoint
    if backend != "torch" or not has_source_memory(start):
        return 0
    layers = named_batchnorm(load_checkpoint(start)[0])
    # Layers that keep no running statistics (track_running_stats=False) have none to keep per condition.
    return NIGHT_BN_CONDITIONS if layers and all(m.running_mean is not None for _, m in layers) else 0


def latest_run(runs: Path) -> Path | None:
    """The newest run named by its start time (others, set-aside runs included, are not nights')."""
    if not runs.is_dir():
        return None
    named = sorted(p for p in runs.iterdir() if p.is_dir() and RUN_NAME.fullmatch(p.name))
    return named[-1] if named else None


def unfinished(run: Path) -> bool:
    """A run with a full-state checkpoint and no summary, or one whose summary says it was interrupted
    (an energy-budget stop is finished)."""
    if not (run / "state").is_dir():
        return False
    try:
        summary = read_json(run / "summary.json")
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return True         # a torn summary: the resume decides (and refuses it as bad input if it must)
    if not isinstance(summary, dict):
        return True         # JSON but no summary ([], "x"): the resume refuses it and the night sets the run aside
    return summary.get("stop_reason") == "interrupted"


RESUME_TRIES = 3                        # nights a run may fail to resume the same way before it is set aside
RESUME_FAILURES = "resume-failures.json"


def count_failed_resume(run: Path, error: Exception) -> int:
    """Nights in a row this run failed to resume with the same kind of error, this one included
    (kept in the run directory; a different error starts the count again)."""
    path = run / RESUME_FAILURES
    kind = f"{error.__class__.__name__}: {str(error)[:200]}"
    try:
        seen = read_json(path)
        count = int(seen["count"]) if seen.get("error") == kind else 0
    except (OSError, ValueError, KeyError, TypeError):
        count = 0
    try:
        atomic_write_bytes(path, json.dumps({"error": kind, "count": count + 1}).encode())
    except OSError:
        pass                # unwritable: the count cannot grow, the run is kept
    return count + 1


def set_aside(run: Path) -> Path:
    """Rename a run that cannot be resumed to RUN.abandoned (RUN.abandoned.2, ... when taken)."""
    target, n = run.with_name(run.name + ABANDONED), 1
    while target.exists():
        n += 1
        target = run.with_name(f"{run.name}{ABANDONED}.{n}")
    run.rename(target)
    return target


def new_run_name(runs: Path, now: datetime.datetime | None = None) -> str:
    """The UTC start time; a later second when that name is taken (two nights in one second)."""
    now = (now or datetime.datetime.now(datetime.timezone.utc)).replace(microsecond=0)
    while (runs / (name := now.strftime("%Y%m%dT%H%M%SZ"))).exists():
        now += datetime.timedelta(seconds=1)
    return name


def metered_validation(energy: EnergyOptions):
    """promote's validation of the deployed model, inside an energy window of its own (the same
    meters the fine-tune used), so that the night's joules include it."""
    def evaluate(config: dict, deployed: Path, run_dir: Path | None = None):
        meter = dataclasses.replace(energy, idle_baseline_s=0.0).open()     # gross joules: idle power is not measured again
        try:
            meter.begin("promote")
            acc, anchor_acc, cost = validate_deployed(config, deployed, run_dir)
            window = meter.end("promote")
        finally:
            meter.close()
        cost.pop("energy", None)
        cost.update({k: window.get(k) for k in ("energy_j", "energy_source", "energy_method")})
        return acc, anchor_acc, cost
    return evaluate


def night_cost(summary: dict, decision: Decision | None) -> dict:
    """The night's all-in cost: the run's totals (training, every evaluation, the layout probe; for a
    resumed run, the epochs of earlier nights too) plus promote's validation of the deployed model."""
    totals = summary.get("totals") or {}
    judged = (decision.evaluation if decision else None) or {}
    run_j, judge_j = totals.get("energy_all_j"), judged.get("energy_j")
    return {
        "flops_all": (totals.get("flops_all") or 0) + (judged.get("flops") or 0),
        "energy_all_j": None if run_j is None and judge_j is None else (run_j or 0) + (judge_j or 0),
        # The whole check (data read and shifted, model loaded): what promote's joules were metered over.
        "wall_all_s": (totals.get("wall_all_s") or 0) + (judged.get("total_s", judged.get("wall_s")) or 0),
        "run": {k: totals.get(k) for k in ("flops_all", "energy_all_j", "wall_all_s", "flops_train", "flops_eval")},
        "promote": {k: judged.get(k) for k in ("samples", "flops", "wall_s", "energy_j")}
        | ({"total_s": judged["total_s"]} if "total_s" in judged else {}),
        "energy_source": totals.get("energy_source"), "energy_method": totals.get("energy_method"),
        "note": "counted FLOPs of the passes run; joules from the run's meter windows and promote's own window",
    }


def _print(line: str) -> None:
    print(line, flush=True)


def _silent(line: str) -> None:
    pass
