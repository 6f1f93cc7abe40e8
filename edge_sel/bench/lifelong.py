"""`edge-sel bench lifelong`: a device's life of many nights, one device per method and seed.

Each device has a home directory as the nightly script knows it (`checkpoints/warmup`, the
`checkpoints/deployed` link that promote maintains, `runs/`), and plays a schedule of nights. A
night is the real nightly path, engine.life's `night` (what `edge-sel night` and the systemd script
run): fine-tune from the deployed model (the warmup while nothing is deployed) on tonight's local
data, then promote. Tonight's data is shard 1/2 (the warmup trained on
shard 0/2) under tonight's condition (`--shift` names: a corruption, a few-class week, noisy
labels), a class-balanced `--subset` drawn anew each night: a camera sees new images every night,
and the same images night after night would reward memorising them. The draw depends on (seed,
night) only, so every method of a seed sees the same images, flips and corruption noise.

After every night the bench evaluates the deployed model on every image domain of the schedule
(clean and each corruption, the same `--test-subset` test images in each) and on the server's
whole clean test split. That evaluation is the bench's measurement, not the device's: its FLOPs
are reported apart and are in no method's totals. A method's totals are what its device spent:
every night's training, validation and test passes (the run's `totals`) and promote's check of the
deployed model (the decision in the run's promote.jsonl).

A single-night reference per corrupted domain, the warmup adapted once to that domain alone (the
same night's data, each of REFERENCE_METHODS with the guard off, the best per seed), is the bar for
the aim "within 1 point of the best single-night adaptation".
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from edge_sel.bench.adapt import fixed_sparsity
from edge_sel.bench.stopping import BenchStop
from edge_sel.config import TrainConfig
from edge_sel.core.flops import FlopCounter
from edge_sel.core.source_memory import has_source_memory
from edge_sel.data.shift import corrupted, parse_shift
from edge_sel.data.split import stratified_take
from edge_sel.data.camera import class_runs
from edge_sel.engine.evaluation.evaluate import accuracy, evaluation_flops, predict_dataset
from edge_sel.engine.night import life
from edge_sel.engine.evaluation.bn_bank import attach_saved_bank
from edge_sel.engine.night.life import Home
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.errors import InputError
from edge_sel.models import load_checkpoint
from edge_sel.predict.conditions import feature_flops
from edge_sel.predict.predictor import Predictor

CONDITIONS = {
    "day": "",                                   # the camera as the server's data: clean images
    "night": "corrupt=gaussian_noise:3",         # a dark scene at high gain: sensor noise
    "fog": "corrupt=fog:3",
    "few": "classes=0,1,8,9",                    # a week that only sees four classes (CIFAR-10: vehicles)
    "labels": "label-noise=0.3:val",             # a week of sloppy labels, for validation too
    "longtail": "imbalance=longtail:10",
}
SCHEDULE = ("day", "night", "day", "few", "night", "labels", "fog", "day")
# Digits: the demo's low-contrast device is its night; four digit classes make the few-class week.
QUICK_CONDITIONS = {**CONDITIONS, "night": "corrupt=contrast:4", "few": "classes=0,1,2,3"}
QUICK_SCHEDULE = ("night", "few", "day")
REFERENCE_METHODS = ("dense", "recipe")
CLEAN = "clean"
SERVER = "server"
# Lever strengths of the lever rows (override with --lever KEY=VALUE): --ewc at its help's starting
# point, half a batch of replayed anchors, half the re-estimation images from the anchors, a reset
# after 10 points lost, BatchNorm statistics for up to 4 conditions.
LEVERS = {"ewc": 1.0, "replay": 0.5, "bn_anchor_share": 0.5, "reset_forgetting": 10.0, "bn_conditions": 4}
WHOLE = ("bn_conditions",)       # levers that count things
# "lifelong": every lever, the penalty lighter: on the demo's digits, replay with anchor BatchNorm
# statistics adapted while keeping the clean digits, and a penalty of 1 or more only held it back.
# No --bn-anchor-share: it shapes --bn-adapt's single set, which the bank (--bn-conditions) replaces.
LIFELONG = {k: v for k, v in {**LEVERS, "ewc": 0.1}.items() if k != "bn_anchor_share"}
GUARD_OFF = 100.0
STREAM_SEGMENT, STREAM_RUN = 250, 30     # the frame-by-frame pass: frames per condition segment, class runs       # --max-forgetting 100: no candidate forgets more than every point


@dataclass
class LifeMethod:
    name: str
    adapts: bool = True                   # False: the device keeps the warmup, no night runs
    epochs: int | None = None             # None: the suite's epochs
    strategy: str = "dense"
    sparsity: str | None = None           # None: the strategy's (or the preset's) choice
    method: dict = field(default_factory=dict)
    bn_adapt: int = 0
    levers: dict = field(default_factory=dict)   # TrainConfig fields: ewc, replay, ..., max_forgetting
    note: str = ""

    @property
    def needs_memory(self) -> bool:
        """Levers and the guard need the warmup's source memory (anchors, Fisher, source weights)."""
        return bool(self.levers)

    def config(self, epochs: int, lr: float, seed: int, device: str, val_subset: int = 0) -> TrainConfig:
        levers = {k: int(v) if k in WHOLE else v for k, v in self.levers.items()}
        return TrainConfig(epochs=epochs if self.epochs is None else self.epochs, lr=lr, seed=seed, device=device,
                           strategy=self.strategy, sparsity=fixed_sparsity(self.sparsity, self.strategy, self.method),
                           method=dict(self.method),
                           bn_adapt=self.bn_adapt, checkpoint_every=0, val_subset=val_subset, **levers)


def life_methods(levers: dict | None = None) -> list[LifeMethod]:
    lv = {**LEVERS, **(levers or {})}
    recipe = {"preset": "adapt"}
    out = [LifeMethod("none", adapts=False, note="no adaptation: the warmup stays deployed"),
           LifeMethod("bn", epochs=0, bn_adapt=500, note="BatchNorm statistics re-estimated each night (forward only)"),
           LifeMethod("conditions", epochs=0, levers={"bn_conditions": lv["bn_conditions"]},
                      note=f"BatchNorm statistics kept per condition (--bn-conditions {lv['bn_conditions']:g}), "
                           f"no training (forward only)"),
           LifeMethod("dense", note="dense nightly fine-tuning: every sample, every parameter"),
           LifeMethod("recipe", method=recipe, note="--preset adapt each night")]
    for lever in ("ewc", "replay", "bn_anchor_share", "reset_forgetting", "bn_conditions"):
        out.append(LifeMethod(f"recipe+{lever}", method=recipe, levers={lever: lv[lever]},
                              note=f"--preset adapt --{lever.replace('_', '-')} {lv[lever]:g}"))
    out.append(LifeMethod("recipe-noguard", method=recipe, levers={"max_forgetting": GUARD_OFF},
                          note=f"--preset adapt with the guard switched off (--max-forgetting {GUARD_OFF:g})"))
    combo = {**LIFELONG, **(levers or {})}
    out.append(LifeMethod("lifelong", method=recipe, levers=combo,
                          note="--preset adapt with every lever: " + ", ".join(f"{k} {v:g}" for k, v in combo.items())))
    return out


QUICK_METHODS = ("none", "bn", "conditions", "dense", "recipe", "lifelong")


def parse_conditions(items: tuple[str, ...], base: dict) -> dict:
    """`--shift NAME=SPEC` (repeatable) adds or replaces a named condition; SPEC is a --shift spec."""
    out = dict(base)
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
            raise InputError(f"--shift: expected NAME=SPEC such as night=corrupt=gaussian_noise:3, got {item!r}")
        parse_shift(spec)           # a bad spec fails here, with --shift's own message
        out[name] = spec
    return out


def parse_schedule(text: str | None, conditions: dict, default: tuple[str, ...]) -> list[str]:
    names = default if text is None else tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in conditions]
    if unknown:
        raise InputError(f"--schedule: unknown condition {', '.join(unknown)}; known: {', '.join(conditions)} "
                         f"(add one with --shift NAME=SPEC)")
    if not names:
        raise InputError("--schedule: no nights given")
    return list(names)


def parse_levers(items: tuple[str, ...]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.replace("-", "_")
        if not sep or key not in LEVERS:
            raise InputError(f"--lever: expected KEY=VALUE with KEY one of {', '.join(LEVERS)}, got {item!r}")
        try:
            out[key] = float(value)
        except ValueError:
            raise InputError(f"--lever: {item!r}: {value!r} is not a number") from None
    return out


def domain_of(spec: str) -> str:
    """The image domain a condition's images are in: clean, or its corruption (name:severity)."""
    shift = parse_shift(spec)
    return CLEAN if shift.corruption is None else f"{shift.corruption[0]}:{shift.corruption[1]}"


def domains(schedule: list[str], conditions: dict) -> list[str]:
    seen = [CLEAN]
    for name in schedule:
        d = domain_of(conditions[name])
        if d not in seen:
            seen.append(d)
    return seen


@dataclass
class EvaluationSets:
    """The bench's own test images: per domain the same class-balanced draw of the test split, and
    the server's whole clean test split."""
    sets: dict                 # domain -> IndexedDataset
    sizes: dict

    @classmethod
    def build(cls, dataset: str, data_dir, domain_names: list[str], per_domain: int | None,
              image_size: int | None = None) -> "EvaluationSets":
        splits = DataOptions(dataset, data_dir, image_size=image_size).load()
        test = splits.test
        picked = test if per_domain is None or per_domain >= len(test) else \
            test.subset(stratified_take(test, per_domain, seed=0))
        sets = {}
        for d in domain_names:
            if d == CLEAN:
                sets[d] = picked
            else:       # corrupted at the size the model is given, as a night's data is (data/shift.py)
                name, severity = d.split(":")
                sets[d] = corrupted(picked.at_run_size(), name, int(severity), seed=0, pool="test")
        sets[SERVER] = test
        return cls(sets, {k: len(v) for k, v in sets.items()})

    def evaluate(self, checkpoint: Path, batch_size: int = 256, predict_batch: int = 1) -> dict:
        """Accuracy of a checkpoint on every set in whole batches and, with `predict_batch`, as a
        device predicts (`frames`: a camera's stream, `predict_batch` images a call), and the counted
        FLOPs of both."""
        model, card = load_checkpoint(checkpoint)
        shape = self.sets[SERVER].input_shape
        if list(card.input_shape) != list(shape):   # a pooled model would run, at a size it was not trained at
            raise InputError(f"--image-size: the checkpoint {checkpoint} takes {card.input_shape[1:]} images, the "
                             f"bench's test images are {shape[1:]}")
        model.eval()
        bank = attach_saved_bank(model, checkpoint, card)    # a device's statistics per condition
        counter = FlopCounter(model, list(card.input_shape))
        acc, flops = {}, 0
        for name, ds in self.sets.items():
            logits = predict_dataset(lambda x: model(x).float(), ds, card.mean, card.std, batch_size)
            acc[name] = accuracy(logits, ds.labels)
            flops += evaluation_flops(counter, len(ds), batch_size)
        if bank is not None:        # the conditions described once, each evaluated image's choice
            shape = list(card.input_shape)
            flops += (sum(len(c.images) for c in bank.conditions) * feature_flops(shape)
                      + bank.take_selected() * bank.choice_flops(shape))
        out = {"acc": acc, "flops": flops}
        if predict_batch:
            out.update(self.frames(checkpoint, predict_batch))
            out["flops"] += out.pop("frame_flops")
        return out

    def stream(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """The domains' images as a camera sees them: segments of STREAM_SEGMENT frames cycling
        through the domains (the server's whole split aside), classes in runs of STREAM_RUN; the
        same order for every checkpoint."""
        g = torch.Generator().manual_seed(0)
        domains = [d for d in self.sets if d != SERVER]
        ordered = {d: class_runs(self.sets[d].labels.cpu(), torch.arange(len(self.sets[d])), STREAM_RUN, g)
                   for d in domains}
        images, labels, names = [], [], []
        for start in range(0, max(len(v) for v in ordered.values()), STREAM_SEGMENT):
            for d in domains:
                rows = ordered[d][start:start + STREAM_SEGMENT]
                if len(rows):
                    images.append(self.sets[d].pixels(rows).cpu())
                    labels.append(self.sets[d].labels[rows].cpu())
                    names += [d] * len(rows)
        return torch.cat(images), torch.cat(labels), names

    def frames(self, checkpoint: Path, predict_batch: int) -> dict:
        """Per domain, the accuracy of `Predictor` on the stream, `predict_batch` images a call."""
        images, labels, names = self.stream()
        predictor = Predictor(checkpoint)
        classes = torch.tensor([c for s in range(0, len(images), predict_batch)
                                for c in predictor.predict(images[s:s + predict_batch]).classes])
        per = predictor.flops_per_image()
        frame_acc = {d: float((classes[rows] == labels[rows]).float().mean())
                     for d in dict.fromkeys(names) for rows in [torch.tensor([i for i, n in enumerate(names) if n == d])]}
        full, rest = divmod(len(images), predict_batch)
        forward = FlopCounter(predictor.model, list(predictor.card.input_shape))
        return {"acc_frames": frame_acc, "predict_batch": predict_batch,
                "frame_flops": (full * forward.eval_batch(predict_batch) + (forward.eval_batch(rest) if rest else 0)
                                + len(images) * per["choice"] + predictor.described * feature_flops(
                                    list(predictor.card.input_shape)))}


def night_data(dataset: str, data_dir, spec: str, subset: int | None, seed: int, night: int,
               test_subset: int | None = None, image_size: int | None = None) -> DataOptions:
    """Tonight's local data: shard 1/2 under tonight's condition, a new draw per (seed, night), at
    the device's resolution (`image_size`: folder images resized). The device's own labelled test
    set is `test_subset` images (the bench measures the deployed model itself; a device's test
    passes only add cost)."""
    return DataOptions(dataset, data_dir, shard="1/2", subset=subset, shift=spec or None, shift_seed=seed,
                       subset_seed=None if subset is None else 7919 * seed + 101 * night + 17,
                       test_subset=test_subset, image_size=image_size)


class Device:
    """One device's home as the nightly script lays it out (checkpoints/warmup, checkpoints/deployed,
    runs/), and its nights through engine.life, the same function `edge-sel night` runs."""

    def __init__(self, home: Path, warmup: Path):
        self.home = Home.at(home)
        self.home.runs.mkdir(parents=True, exist_ok=True)
        shutil.copytree(warmup, self.home.warmup, dirs_exist_ok=True)

    def current(self) -> Path:
        """The model the device uses now: the deployed one, the warmup while nothing is deployed."""
        return self.home.start_checkpoint()

    def night(self, name: str, data: DataOptions, cfg: TrainConfig) -> dict:
        """One night: a new run runs/NAME from the current model, then promote."""
        result = life.night(self.home, data, cfg, run_name=name, quiet=True)
        decision = asdict(result.decision) if result.decision else {"promote": False, "rule": "interrupted"}
        return {"run": str(result.run_dir), "summary": result.summary, "promote": decision, "cost": result.cost}


def night_costs(night: dict) -> dict:
    """What the device spent on one night, all in (engine.life's night cost: the run's totals and
    promote's metered check of the deployed model)."""
    t, cost = night["summary"]["totals"], night["cost"]
    check = cost.get("promote") or {}
    return {"flops_train": t.get("flops_train") or 0,
            "flops_eval": (t.get("flops_eval") or 0) + (check.get("flops") or 0),
            "flops_all": cost.get("flops_all") or 0, "energy_j": cost.get("energy_all_j"),
            "energy_method": cost.get("energy_method"), "energy_source": cost.get("energy_source"),
            "wall_s": cost.get("wall_all_s") or 0.0, "samples_trained": t.get("samples_trained") or 0}


NO_COST = {"flops_train": 0, "flops_eval": 0, "flops_all": 0, "energy_j": 0.0, "energy_method": None,
           "energy_source": None, "wall_s": 0.0, "samples_trained": 0}


def forgetting(history: list[dict]) -> dict:
    """Per domain: the best accuracy it ever had (the start included) minus the current, in points."""
    now = history[-1]["acc"]
    return {d: 100 * (max(h["acc"][d] for h in history) - now[d]) for d in now}


def average(acc: dict, image_domains: list[str]) -> float:
    return sum(acc[d] for d in image_domains) / len(image_domains)


@dataclass
class LifeSettings:
    dataset: str
    data_dir: Path | None
    warmup: Path
    schedule: list[str]
    conditions: dict
    methods: list[LifeMethod]
    seeds: list[int]
    subset: int | None
    epochs: int
    lr: float
    device: str
    out: Path
    test_subset: int | None
    val_subset: int = 0              # 0: each method's own validation size (the recipe sizes its own)
    reference_methods: tuple[str, ...] = REFERENCE_METHODS
    skipped: dict = field(default_factory=dict)      # method -> why it did not run
    predict_batch: int = 1           # the deployed model also predicts a camera's stream, N images a call (0: not)
    image_size: int | None = None    # folder images resized to the device's resolution (None: as they are)


def play(s: LifeSettings, log=print, stop: BenchStop | None = None) -> dict:
    """Every method's life for every seed, night by night, and the single-night references. A stop
    (bench/stopping.py) ends the bench after the night under way: a seed whose life it cut is in no
    mean, the references are not run, and "stopped" names what was cut."""
    stop = stop or BenchStop()
    t0 = time.perf_counter()
    image_domains = domains(s.schedule, s.conditions)
    evalsets = EvaluationSets.build(s.dataset, s.data_dir, image_domains, s.test_subset, s.image_size)
    start = evalsets.evaluate(s.warmup, predict_batch=s.predict_batch)
    bench_eval_flops = start["flops"]
    lives: dict = {m.name: [] for m in s.methods}
    for seed in s.seeds:
        if stop.stopped:
            break
        devices = {m.name: Device(s.out / "homes" / m.name / f"seed{seed}", s.warmup) for m in s.methods}
        history = {m.name: [{"night": 0, "condition": "start", "acc": start["acc"], "forgetting": {},
                             "acc_frames": start.get("acc_frames"), **NO_COST}] for m in s.methods}
        for i, condition in enumerate(s.schedule, 1):
            if stop.stopped:
                break
            data = night_data(s.dataset, s.data_dir, s.conditions[condition], s.subset, seed, i, s.test_subset,
                              s.image_size)
            for m in s.methods:
                if stop.stopped:
                    break
                dev, past = devices[m.name], history[m.name]
                row = {"night": i, "condition": condition, "shift": s.conditions[condition]}
                if m.adapts:
                    began = time.perf_counter()
                    cfg = m.config(s.epochs, s.lr, seed, s.device, s.val_subset)
                    night = dev.night(f"night{i:02d}-{condition}", data, cfg)
                    if stop.stopped_run(Path(night["run"]), f"{m.name} night {i}", seed, cfg.epochs):
                        break
                    decision = night["promote"]
                    # elapsed_s: the whole night as the bench waited for it (data loading included)
                    row.update(night_costs(night), elapsed_s=time.perf_counter() - began, run=night["run"],
                               rule=decision["rule"],
                               promoted=decision["promote"], kept=(night["summary"].get("kept") or {}).get("kept"))
                else:
                    row.update(NO_COST, rule="no-adaptation", promoted=False, kept=None)
                if row["promoted"]:
                    measured = evalsets.evaluate(dev.current(), predict_batch=s.predict_batch)
                    row["acc"], bench_eval_flops = measured["acc"], bench_eval_flops + measured["flops"]
                    row["acc_frames"] = measured.get("acc_frames")
                else:
                    row["acc"] = past[-1]["acc"]       # the same deployed weights: the same accuracies
                    row["acc_frames"] = past[-1].get("acc_frames")
                past.append(row)
                row["forgetting"] = forgetting(past)
                row["average"] = average(row["acc"], image_domains)
                log(f"  seed {seed} night {i} {condition:8s} {m.name:18s} {row['rule']:12s} "
                    + " ".join(f"{d} {100 * row['acc'][d]:5.1f}" for d in [*image_domains, SERVER])
                    + f"  {row['flops_train'] / 1e9:8.2f} GFLOP train {row.get('elapsed_s', 0):6.1f} s")
        if stop.stopped:        # this seed's lives are cut short: in no mean
            break
        for m in s.methods:
            past = history[m.name]
            past[0]["average"] = average(past[0]["acc"], image_domains)
            lives[m.name].append({"seed": seed, "nights": past, "totals": life_totals(past[1:])})
    references, ref_flops = ({}, 0) if stop.stopped else single_night_references(s, evalsets, image_domains, log)
    return {"domains": image_domains, "evaluation_sizes": evalsets.sizes, "start": start["acc"],
            "lives": lives, "references": references, "wall_s": time.perf_counter() - t0,
            "bench_eval_flops": bench_eval_flops + ref_flops, "stopped": stop.describe()}


def life_totals(nights: list[dict]) -> dict:
    """The sums over a life's nights (energy None when no night was metered)."""
    out = {k: sum(n[k] for n in nights)
           for k in ("flops_train", "flops_eval", "flops_all", "wall_s", "samples_trained")}
    joules = [n["energy_j"] for n in nights if n["energy_j"] is not None]
    out["energy_j"] = sum(joules) if joules else None
    out["energy_methods"] = sorted({n["energy_method"] for n in nights if n["energy_method"]})
    out["promoted"] = sum(1 for n in nights if n["promoted"])
    return out


def single_night_references(s: LifeSettings, evalsets: EvaluationSets, image_domains: list[str], log) -> tuple[dict, int]:
    """For each corrupted domain: the warmup adapted once, on the schedule's first night of that
    domain, by each reference method with the guard off (the bar is what adapting to that domain
    alone reaches; a guard that refused it would leave the warmup as the bar); the accuracy on that
    domain per seed."""
    by_name = {m.name: m for m in life_methods()}
    refs: dict = {}
    flops = 0
    for d in image_domains[1:]:
        i = next(k for k, c in enumerate(s.schedule, 1) if domain_of(s.conditions[c]) == d)
        condition = s.schedule[i - 1]
        refs[d] = {"condition": condition, "night": i, "methods": {}, "max_forgetting": GUARD_OFF}
        for name in s.reference_methods:
            rows = []
            for seed in s.seeds:
                dev = Device(s.out / "references" / d.replace(":", "-") / name / f"seed{seed}", s.warmup)
                data = night_data(s.dataset, s.data_dir, s.conditions[condition], s.subset, seed, i, s.test_subset,
                                  s.image_size)
                cfg = by_name[name].config(s.epochs, s.lr, seed, s.device, s.val_subset)
                cfg.max_forgetting = GUARD_OFF
                night = dev.night(f"night{i:02d}-{condition}", data, cfg)
                measured = evalsets.evaluate(dev.current(), predict_batch=0)
                flops += measured["flops"]
                rows.append({"seed": seed, "acc": measured["acc"][d], "rule": night["promote"]["rule"],
                             **night_costs(night)})
                log(f"  reference {d} seed {seed} {name:8s} {100 * rows[-1]['acc']:5.1f}")
            refs[d]["methods"][name] = rows
        refs[d]["best_per_seed"] = {seed: max(refs[d]["methods"][n][k]["acc"] for n in s.reference_methods)
                                    for k, seed in enumerate(s.seeds)}
    return refs, flops


def select_methods(methods: list[LifeMethod], names: str | None, warmup: Path, default: tuple[str, ...] | None = None
                   ) -> tuple[list[LifeMethod], dict]:
    """The methods asked for (all, or `default`), less those that need source memory the warmup
    lacks (with the reason)."""
    known = {m.name: m for m in methods}
    wanted = list(known) if names is None and default is None else \
        list(default) if names is None else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise InputError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    memory = has_source_memory(warmup)
    skipped = {n: f"{warmup} has no source memory (anchors, Fisher, source weights): pretrain it with them"
               for n in wanted if known[n].needs_memory and not memory}
    if names is not None and skipped:       # asked for by name: say so rather than drop it
        name, why = next(iter(skipped.items()))
        raise InputError(f"--methods {name}: {why}")
    return [known[n] for n in wanted if n not in skipped], skipped
