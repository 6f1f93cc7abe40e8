"""Threshold controllers that hold a gate's activation rate at a target.

Both measure the rate as a moving average and raise the threshold when too many samples pass.
`PositionalPI` is ours. `SeedVelocityPI` is the AST seed's loop, kept only so its presets behave
as published (its threshold falls to the floor and stays there: see tests/test_gating_control.py)."""

from __future__ import annotations

import torch


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


class PositionalPI:
    """tau = bias + kp * e + ki * I, with e = EMA(activation) - target and I the summed error.

    Positional form: tau is a function of the present error and its integral, so kp acts as a
    proportional gain (in the seed's velocity form tau accumulated kp * e every step, turning the
    "P" term into an integrator and "I" into a double integrator). `bias` is the feed-forward guess
    of the threshold (the gate sets it per epoch); the integral absorbs what the guess misses.
    Anti-windup: while the output is clamped and the error pushes it further out, I is frozen.
    """

    def __init__(self, target: float, tau0: float, kp: float = 0.3, ki: float = 0.1, alpha: float = 0.3,
                 lo: float = 0.0, hi: float = 1.5, i_max: float = 20.0):
        self.target, self.kp, self.ki, self.alpha = target, kp, ki, alpha
        self.lo, self.hi, self.i_max = lo, hi, i_max
        self.bias = tau0
        self.integral = 0.0
        self.ema = target
        self.tau = _clamp(tau0, lo, hi)

    def set_bias(self, bias: float) -> None:
        self.bias = bias
        self.tau = _clamp(self._output(self.integral), self.lo, self.hi)

    def _output(self, integral: float) -> float:
        return self.bias + self.kp * (self.ema - self.target) + self.ki * integral

    def update(self, rate: float) -> float:
        """Feed the activation measured with the current threshold; returns the next threshold."""
        self.ema = self.alpha * rate + (1 - self.alpha) * self.ema
        error = self.ema - self.target
        trial = _clamp(self.integral + error, -self.i_max, self.i_max)
        out = self._output(trial)
        winding = (out > self.hi and error > 0) or (out < self.lo and error < 0)
        if not winding:
            self.integral = trial
        self.tau = _clamp(self._output(self.integral), self.lo, self.hi)
        return self.tau

    def state_dict(self) -> dict:
        return {k: torch.tensor(float(getattr(self, k)), dtype=torch.float64)
                for k in ("target", "bias", "integral", "ema", "tau")}

    def load_state_dict(self, state: dict) -> None:
        for k in ("target", "bias", "integral", "ema", "tau"):
            setattr(self, k, float(state[k]))


class SeedVelocityPI:
    """The AST seed's per-batch loop, constants passed in from its scripts:
    ema <- a r + (1 - a) ema; e = ema - target; I <- clamp(I + e) only while lo < tau < hi (strictly),
    else I <- 0.9 I; tau <- clamp(tau + kp e + ki I, lo, hi)."""

    def __init__(self, target: float, tau0: float, kp: float, ki: float, alpha: float, lo: float, hi: float,
                 i_max: float = 100.0):
        self.target, self.kp, self.ki, self.alpha = target, kp, ki, alpha
        self.lo, self.hi, self.i_max = lo, hi, i_max
        self.tau, self.integral, self.ema = tau0, 0.0, target

    def update(self, rate: float) -> float:
        self.ema = self.alpha * rate + (1 - self.alpha) * self.ema
        error = self.ema - self.target
        if self.lo < self.tau < self.hi:
            self.integral = _clamp(self.integral + error, -self.i_max, self.i_max)
        else:
            self.integral *= 0.9
        self.tau = _clamp(self.tau + self.kp * error + self.ki * self.integral, self.lo, self.hi)
        return self.tau

    def state_dict(self) -> dict:
        return {k: torch.tensor(float(getattr(self, k)), dtype=torch.float64)
                for k in ("target", "integral", "ema", "tau")}

    def load_state_dict(self, state: dict) -> None:
        for k in ("target", "integral", "ema", "tau"):
            setattr(self, k, float(state[k]))
