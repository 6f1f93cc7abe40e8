"""What the sampler accumulates for one named window, and the record fields it becomes."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import METHOD_ORDER, SHARED


@dataclass
class Window:
    name: str
    start_t: float
    energy_j: dict[str, float] = field(default_factory=dict)   # per counted component
    covered_s: dict[str, float] = field(default_factory=dict)  # time with a working reading
    peak_power_w: float | None = None
    max_temp_c: float | None = None
    throttle_reasons: set[str] = field(default_factory=set)
    samples: int = 0
    # The most processes other than this one seen computing on a metered GPU during the window
    # (None: never counted); a window with others in it holds their joules too.
    shared_with: int | None = None
    gpu_processes: int | None = None

    def add_interval(self, component: str, joules: float, covered_s: float) -> None:
        self.energy_j[component] = self.energy_j.get(component, 0.0) + joules
        self.covered_s[component] = self.covered_s.get(component, 0.0) + covered_s

    def add_sample(self, power_w: float | None, max_temp_c: float | None, reasons: list[str]) -> None:
        self.samples += 1
        if power_w is not None and (self.peak_power_w is None or power_w > self.peak_power_w):
            self.peak_power_w = power_w
        if max_temp_c is not None and (self.max_temp_c is None or max_temp_c > self.max_temp_c):
            self.max_temp_c = max_temp_c
        self.throttle_reasons.update(reasons)

    def add_processes(self, counted: tuple[int, int] | None) -> None:
        if counted is not None:
            others, every = counted
            self.shared_with = max(self.shared_with or 0, others)
            self.gpu_processes = max(self.gpu_processes or 0, every)

    def fields(self, end_t: float, components: dict[str, tuple[str, str]],
               readable_now: set[str], idle_power_w: float | None = None,
               counts_processes: bool = False) -> dict:
        """Record fields. `components` maps each counted component to (meter name, method);
        `counts_processes`: a meter can count the processes sharing its device (the fields then say
        with how many others; a shared window's method ends in "+shared")."""
        duration = max(end_t - self.start_t, 0.0)
        if not components:
            energy = None
            coverage = 0.0
        else:
            energy = sum(self.energy_j.get(c, 0.0) for c in components)
            # The total is complete only while every component is read, so the window's
            # coverage is that of its least covered component.
            if duration > 0:
                coverage = min(min(self.covered_s.get(c, 0.0) / duration, 1.0) for c in components)
            else:
                coverage = 1.0 if set(components) <= readable_now else 0.0
        meters = list(dict.fromkeys(meter for meter, _ in components.values()))
        methods = {method for _, method in components.values()}
        method = "+".join(m for m in METHOD_ORDER if m in methods) or "unavailable"
        if self.shared_with:
            method += "+" + SHARED
        fields = {
            "energy_j": energy,
            "energy_source": "+".join(meters) or "none",
            "energy_method": method,
            "energy_coverage": coverage,
            "avg_power_w": energy / duration if energy is not None and duration > 0 else None,
            "peak_power_w": self.peak_power_w,
            "max_temp_c": self.max_temp_c,
            "energy_by_component": {c: self.energy_j.get(c, 0.0) for c in components},
            "throttle_reasons": sorted(self.throttle_reasons),
            "energy_window_s": duration,
            "energy_samples": self.samples,
        }
        if counts_processes:
            fields["energy_shared_with"] = self.shared_with
            fields["energy_gpu_processes"] = self.gpu_processes
        if idle_power_w is not None and energy is not None:
            fields["idle_power_w"] = idle_power_w
            fields["energy_net_j"] = energy - idle_power_w * duration
        return fields
