"""A run's limits (engine/loop/budget.py): --time-budget stops a run cleanly before its wall seconds
would be passed, as --energy-budget does for joules; with both, the first to bind names the stop.
Every second here is a fake clock's, advanced by the steps and evaluations themselves."""

import pytest

from edge_sel.engine.evaluation.evaluate import EvaluationSets
from edge_sel.engine.loop import budget as budget_module
from edge_sel.engine.loop.budget import ENERGY, TIME, RunBudget
from edge_sel.engine.loop.trainer import Trainer
from edge_sel.report.summary import budget_stop_line
from helpers import SAME_CHOICES, records, run_cli, summary


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeMeter:
    total_j = 0.0


def test_no_step_starts_that_the_estimate_says_would_pass_the_time_budget():
    clock = FakeClock()
    budget = RunBudget(limit_s=100.0, clock=clock)
    clock.now += 20                                 # probes and planning count from the run's start
    budget.reserve_evaluation(None, 3.0, images_evaluated=100, final_images=200)     # 6 s reserved
    start, steps = clock.now, 0
    while not budget.passed_by_next_step(FakeMeter(), 0.0, start, steps):
        clock.now += 10                             # one step: 10 s
        steps += 1
    # 20 + 7 x 10 + 6 = 96 fits; an eighth step would end the run at 106 s.
    assert steps == 7 and budget.passed_by_next_step(FakeMeter(), 0.0, start, steps) == TIME
    assert budget.stopped == {"budget": TIME, "limit_s": 100.0, "spent_s": 90.0, "next_step_s_estimated": 10.0,
                              "final_evaluation_s_estimated": 6.0}
    # A resumed run adds the seconds its earlier part recorded.
    resumed = RunBudget(limit_s=100.0, clock=clock)
    resumed.offset_s, resumed.step_s = 91.0, 10.0
    assert resumed.passed_by_next_step(FakeMeter(), 0.0, clock.now, 0) == TIME


# After nine steps of 10 s and 100 J: 90 s and 950 J spent, one more step needs 10 s and 100 J.
@pytest.mark.parametrize("limit_j, limit_s, named", [
    (1100.0, 95.0, TIME),       # time alone would be passed (5 of 10 s left; 150 of 100 J)
    (1000.0, 400.0, ENERGY),    # energy alone (50 of 100 J left)
    (980.0, 97.0, ENERGY),      # both: energy has 30% of what it needs left, time 70%
    (1000.0, 92.0, TIME),       # both: time has 20% left, energy 50%
    (1e9, 1e9, None),
])
def test_with_both_limits_the_first_to_bind_names_the_stop(limit_j, limit_s, named):
    clock, meter = FakeClock(), FakeMeter()
    budget = RunBudget(limit_j=limit_j, limit_s=limit_s, clock=clock)
    start_j, start_s = meter.total_j, clock.now
    for _ in range(9):                              # nine steps of 10 s and 100 J each
        clock.now += 10
        meter.total_j += 100
    budget.offset_j = 50.0                          # joules of the run's earlier part
    assert budget.passed_by_next_step(meter, start_j, start_s, 9) == named
    assert (budget.stopped or {}).get("budget") == named


STEP_S, IMAGE_S = 10.0, 0.01


@pytest.fixture
def fake_time(monkeypatch):
    """The run's clock is a fake one: a training step takes STEP_S, an evaluation IMAGE_S an image,
    nothing else any time. Each budget check is kept: (verdict, seconds so far, estimated need)."""
    clock = FakeClock()
    monkeypatch.setattr(budget_module, "CLOCK", clock)
    step, logits, check = Trainer._train_step, EvaluationSets.logits, RunBudget.passed_by_next_step
    clock.steps, clock.checks, clock.interrupt_at = 0, [], None

    def timed_step(self, *args):
        clock.now += STEP_S
        clock.steps += 1
        if clock.steps == clock.interrupt_at:       # as SIGTERM would: finish the step, checkpoint, stop
            self.stop_requested = True
        return step(self, *args)

    def timed_logits(self, predict, ds):
        clock.now += IMAGE_S * len(ds)
        return logits(self, predict, ds)

    def kept_check(self, *args):
        verdict = check(self, *args)
        clock.checks.append((verdict, self.total_s(), self.step_s + self.eval_s))
        return verdict

    monkeypatch.setattr(Trainer, "_train_step", timed_step)
    monkeypatch.setattr(EvaluationSets, "logits", timed_logits)
    monkeypatch.setattr(RunBudget, "passed_by_next_step", kept_check)
    return clock


# 576 synthetic images in steps of 32: 18 steps (180 s) an epoch, so the run stops in its second epoch.
LIMIT_S = 250.0


def finetune(ckpt, out, *extra, expect=0):
    # A large energy budget beside the time budget: a night gives both, and time binds first here.
    return run_cli("finetune", "--checkpoint", ckpt, "--dataset", "synthetic", "--epochs", 3, "--batch-size", 32,
                   "--time-budget", LIMIT_S, "--energy-budget", 1e9, "--out", out, "--quiet", *SAME_CHOICES,
                   *extra, expect=expect)


def test_a_time_budget_stops_the_run_cleanly_before_the_step_that_would_pass_it(tiny_warm, tmp_path, fake_time):
    start = fake_time.now
    result = finetune(tiny_warm, tmp_path / "cut")
    cut, s = records(tmp_path / "cut"), summary(tmp_path / "cut")
    assert s["stop_reason"] == TIME and cut[-1]["stop_reason"] == TIME and s["budget_stop"]["budget"] == TIME
    assert "stopped before the time budget would be exceeded" in result.output
    assert (tmp_path / "cut" / "model.safetensors").is_file()
    # Every step started within the limit as estimated, and the check that stopped it was right:
    # the whole run, its final evaluation included, ended within the limit.
    allowed = [c for c in fake_time.checks if c[0] is None]
    assert len(allowed) == fake_time.steps == sum(r["optimizer_steps"] for r in cut)
    assert all(spent + need <= LIMIT_S for _, spent, need in allowed)
    verdict, spent, need = fake_time.checks[-1]
    assert verdict == TIME and spent + need > LIMIT_S and spent == s["budget_stop"]["spent_s"]
    assert fake_time.now - start <= LIMIT_S
    # The budget ended the run: a resume is refused like that of a finished run, records untouched.
    result = run_cli("finetune", "--resume", tmp_path / "cut", expect=2)
    assert "time budget" in result.output and records(tmp_path / "cut") == cut
    # Cut off after its last state and before its summary: the resume writes the outputs, trains no more.
    (tmp_path / "cut" / "summary.json").unlink()
    steps = fake_time.steps
    run_cli("finetune", "--resume", tmp_path / "cut", "--quiet")
    assert fake_time.steps == steps and summary(tmp_path / "cut")["stop_reason"] == TIME
    assert summary(tmp_path / "cut")["budget_stop"] == s["budget_stop"]
    assert (tmp_path / "cut" / "model.safetensors").is_file()

    # Interrupted after the last step the budget allowed, and resumed: the resumed run adds the seconds
    # its first part recorded and keeps its step's mean, so it stops there, with the same seconds spent.
    fake_time.now, fake_time.steps, fake_time.interrupt_at = start, 0, sum(r["optimizer_steps"] for r in cut)
    finetune(tiny_warm, tmp_path / "twice", expect=130)
    fake_time.interrupt_at = None
    run_cli("finetune", "--resume", tmp_path / "twice", "--quiet")
    again = summary(tmp_path / "twice")
    assert again["stop_reason"] == TIME and again["budget_stop"]["budget"] == TIME
    assert again["budget_stop"]["spent_s"] == pytest.approx(s["budget_stop"]["spent_s"])
    assert fake_time.steps == sum(r["optimizer_steps"] for r in cut)


def test_the_closing_line_names_the_limit_that_stopped_the_run_and_its_figures():
    stop = {"budget": TIME, "limit_s": 250.0, "spent_s": 236.88, "next_step_s_estimated": 10.0,
            "final_evaluation_s_estimated": 5.84}
    assert budget_stop_line({"stop_reason": TIME, "budget_stop": stop}) == (
        "stopped before the time budget would be exceeded (236.9 of 250 s spent, measured; one more step and the "
        "final evaluation estimated at 15.8 s); records and checkpoint are written")
    stop = {"budget": ENERGY, "limit_j": 30.0, "spent_j": 25.25, "next_step_j_estimated": 4.0,
            "final_evaluation_j_estimated": 2.0}
    said = budget_stop_line({"stop_reason": ENERGY, "budget_stop": stop, "totals": {"energy_method": "estimated"}})
    assert said.startswith("stopped before the energy budget would be exceeded (25.2 of 30 J spent, estimated; ")
    assert budget_stop_line({"stop_reason": "interrupted"}) is None and budget_stop_line({}) is None
