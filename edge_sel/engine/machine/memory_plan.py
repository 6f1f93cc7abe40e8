"""A training step that fits a memory budget, planned before the first step by counting on the meta
device (core/memory.py): nothing is allocated, nothing is killed.

The budget bounds what the run adds to the process: the training step's counted peak (weights,
optimizer state, the batch, and what the step keeps: activations, gradients, transients) beside what
the process grew by before the first step, measured (`spent_mb`: kernels loaded on first use,
planning; engine/loop/first_use.py). The datasets a run holds come on top and are stated beside it. In order, the plan tries:

1. the step as asked;
then with lean saves (core/lean_saves.py: frozen convolutions keep no input, norm-activation pairs run
again in backward; the same gradients to the bit):
2. the whole batch, lean in as few of the earliest blocks as fit;
3. blocks recomputed in backward (torch.utils.checkpoint), the earliest first: one more forward of a
   block for the activations it would keep (counted in the step's FLOPs);
4. micro-batches with gradient accumulation (halving), lean in as few of the earliest blocks as fit,
   else with the fewest of them recomputed (where every block recomputed fits): the whole batch's update;
   a step's rows split near-evenly (core/micro_batches.py). BatchNorm layers train their statistics
   on a micro-batch only where every micro-batch of every step holds at least MIN_STATISTICS images;
   else the plan freezes them (the running statistics normalise, the scale and shift still train)
   and says so in its line and in each record (`memory_bn_statistics`).

The plan counts a step at the most rows one can carry (most_rows): the batch, a trailing sample the
loader merges into the batch before it, a row a gate left waiting for the next step, and the rows
replayed beside them.

For `--sparsity budget` the plan first chooses what trains (choose_trainable): everything where it
fits in micro-batches of 8 images or more; else, in each of the shapes other methods may take (the
whole batch, every block recomputed, micro-batches down to 8 images), for each depth (the earliest
block that learns anything) the biases and norms from there on, then the weight tensors of those
blocks by gain per byte until the budget is spent; the depth with the most gain wins, and a slower
shape wins only for 5% more gain. Where not even the classifier fits in micro-batches of 8, the
classifier alone trains in the micro-batch it fits. A budget nothing fits is one line naming the
smallest budget that does: the classifier alone at a micro-batch of one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from edge_sel.core.lean_saves import LEAN_NOTE, lean_note
from edge_sel.core.memory import MiB, MemoryCount, MemoryCounter, StepShape
from edge_sel.core.micro_batches import fewest_images
from edge_sel.core.words import plural
from edge_sel.errors import InputError
from edge_sel.methods.update.fixed_sets import bias_norm_names, classifier_names
from edge_sel.models.blocks import named_blocks

# Images a micro-batch must hold for BatchNorm layers to train their statistics on it; below, the plan
# freezes them. Micro-batches of 2-4 that trained their statistics were noisy on digits (edgecnn, batch
# 64: micro-batches of 4 ended at a training loss of 0.87, whole batches at 0.38) and one image fails
# where a map is 1 x 1.
MIN_STATISTICS = 8
# Share of the budget held back for what counting cannot see: buffers kernels allocate for themselves
# (convolution and BatchNorm backward; measured up to a fifth of a recomputing step's count) and the
# allocator's slack. The plan fits the counted peak in the rest.
RESERVE = 0.2
# Micro-batches of fewer images than this do not train everything where a choice can train less at the
# whole batch: BatchNorm statistics of a few images are noisy.
MIN_CHUNK_FOR_EVERYTHING = 8
# A choice that recomputes blocks or takes smaller micro-batches (slower steps, noisier BatchNorm
# statistics) wins over one before it only where it is expected to gain this share more.
MORE_GAIN = 0.05


def usable(budget_mb: float, spent_mb: float = 0.0) -> int:
    """Bytes of a budget a plan may fill with what it counts, where the process already grew by
    `spent_mb` (measured: kernels loaded on first use, planning)."""
    return int((budget_mb * (1 - RESERVE) - spent_mb) * MiB)


def forward_batch_that_fits(counter: MemoryCounter, batch: int, budget_mb: float, kept: int,
                            train_mode: bool = False, spent_mb: float = 0.0) -> int:
    """The batch of forward-only passes (evaluation, scoring), halved from `batch` until its count fits
    the budget beside the `kept` bytes training keeps alive between its steps: the optimizer's state
    and the last step's gradients (counted alone, a 200 MiB plan's evaluation at batch 16 fitted, and
    measured 224 MiB after an epoch)."""
    lowest = 2 if train_mode else 1         # BatchNorm in train mode needs two images
    while batch > lowest and counter.count_forward(batch, train_mode).peak + kept > usable(budget_mb, spent_mb):
        batch = max(lowest, batch // 2)
    return batch


def spent_after_planning(budget_mb: float, warm_mb: float, grown_mb: float) -> float:
    """The growth a plan fits beside once planning has run: what the kernels' first use grew the process
    by (`warm_mb`), and of planning's own growth on top of it (`grown_mb` in all) what the reserve does
    not hold. The reserve stands for the buffers and caches a run's first steps make; planning's timed
    steps made them before the first step, so they come off the reserve first, never off the budget
    twice: the count and all the growth still fit the budget."""
    return max(warm_mb, grown_mb - budget_mb * RESERVE)


@dataclass
class MemoryPlan:
    budget_mb: float
    batch_size: int
    micro_batch: int
    recompute: list[str]
    bn_statistics: str
    counted: dict                         # MemoryCount.mib() of the planned step
    asked_mb: float                       # the step as asked, counted
    trainable: list[str] | None = None    # names chosen for --sparsity budget (None: the updater's own)
    notes: list[str] = field(default_factory=list)
    gains: dict | None = None             # where --sparsity budget's gains came from, and what that cost
    spent_mb: float = 0.0                 # the process's growth before the first step, measured (first_use.py)
    lean: bool | list[str] = False        # lean saves (core/lean_saves.py): everywhere, or in the blocks named
    grown_mb: float = 0.0                 # the process's growth before the first step, planning's included, measured

    def shape(self) -> StepShape:
        return StepShape(self.batch_size, self.micro_batch if self.micro_batch < self.batch_size else 0,
                         tuple(self.recompute), self.bn_statistics,
                         self.lean if isinstance(self.lean, bool) else tuple(self.lean))

    def statistics(self) -> str:
        """What BatchNorm layers normalise with while the plan trains, in words (the record's
        `memory_bn_statistics`)."""
        if self.bn_statistics == "frozen":
            return "frozen"
        if self.micro_batch >= self.batch_size:
            return "trained on each step's rows"
        return f"trained on micro-batches of at least {fewest_images(self.micro_batch, self.batch_size)} images"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "MemoryPlan":
        try:
            return cls(**data)
        except TypeError as e:
            raise InputError(f"memory_plan in config.json: {e}") from None

    def line(self) -> str:
        parts = [f"the training step counted {self.counted['peak_mb']:.1f} MiB of the {self.budget_mb:g} MiB budget "
                 f"({RESERVE:.0%} held back for kernels' own buffers"
                 + (f", {self.spent_mb:.1f} MiB for what the process grew by before the first step: torch's "
                    f"kernels loaded on first use and planning, measured" if self.spent_mb else "")
                 + (f"; the process grew {self.grown_mb:.1f} MiB before the first step, planning's timed steps "
                    f"included, {self.grown_mb - self.spent_mb:.1f} of it in the reserve: the caches a first step "
                    f"makes" if self.grown_mb > self.spent_mb + 0.05 else "")
                 + "); the budget bounds what the run adds to the process, not the process (Python, torch and "
                   "the data come on top; measured at the end of the run)"]
        if self.micro_batch < self.batch_size:
            parts.append(f"micro-batches of at most {self.micro_batch} (steps of up to {self.batch_size} rows "
                         f"accumulated), BatchNorm statistics {self.statistics()}")
        if self.lean:
            where = "" if self.lean is True else f" in the first {plural(len(self.lean), 'block')}"
            parts.append(f"frozen convolutions keep no input and norm-activation pairs run again in backward{where}")
        if self.recompute:
            parts.append(f"{plural(len(self.recompute), 'block')} recomputed")
        if self.trainable is not None:
            parts.append(f"{len(self.trainable)} tensors chosen to train")
        return "memory plan: " + ", ".join(parts) + f" (as asked: {self.asked_mb:.1f} MiB)"


def _fits(counter: MemoryCounter, shape: StepShape, trainable, budget: int) -> MemoryCount | None:
    count = counter.count(shape, trainable)
    return count if count.peak <= budget else None


def _fewest_recomputed(counter: MemoryCounter, base: StepShape, blocks: list[str], trainable, budget: int,
                       tried_without: bool = False) -> tuple[StepShape, MemoryCount] | None:
    """`base` with the fewest of its first blocks recomputed that fits (the earliest keep the largest
    activations), or None. Every block recomputed is counted first: where that does not fit, fewer do
    not, and nothing else is counted. Then none (unless `tried_without`), then the fewest by
    bisection: at 1/10 of Lite0's full FT peak, 0.1 MiB more growth before the first step had the
    plan recompute all 18 blocks, 1.5x the step's FLOPs, where fewer fit."""
    if not blocks:
        count = None if tried_without else _fits(counter, base, trainable, budget)
        return None if count is None else (base, count)
    every = replace(base, recompute=tuple(blocks))
    count = _fits(counter, every, trainable, budget)
    if count is None:
        return None
    if not tried_without and (without := _fits(counter, base, trainable, budget)) is not None:
        return base, without
    return _fewest_leading(counter, lambda k: replace(base, recompute=tuple(blocks[:k])), 1, len(blocks) - 1,
                           (every, count), trainable, budget)


def _fewest_leading(counter: MemoryCounter, shaped, lo: int, hi: int, found, trainable, budget: int):
    """By bisection, the fewest leading blocks k in [lo, hi] whose shape `shaped(k)` fits, with its
    count; `found` (a shape with more of them that fits, and its count) where none does."""
    while lo <= hi:
        k = (lo + hi) // 2
        shape = shaped(k)
        count = _fits(counter, shape, trainable, budget)
        if count is None:
            lo = k + 1
        else:
            found, hi = (shape, count), k - 1
    return found


def _fewest_lean(counter: MemoryCounter, base: StepShape, blocks: list[str], trainable, budget: int
                 ) -> tuple[StepShape, MemoryCount] | None:
    """`base` (no block recomputed) with lean saves in the fewest of its first blocks that fits (none
    included), or None where lean saves everywhere do not fit: they cost time in many small passes
    (docs/memory-budget.md, "Lean saves where they are needed"). The earliest keep the largest maps."""
    every = replace(base, lean=True)
    count = _fits(counter, every, trainable, budget)
    if count is None:
        return None
    return _fewest_leading(counter, lambda k: replace(base, lean=tuple(blocks[:k]) or False), 0, len(blocks) - 1,
                           (every, count), trainable, budget)


def smallest_budget(counter: MemoryCounter, model, trainable=None, batch_size: int = 1, spent_mb: float = 0.0) -> float:
    """MiB of the budget of the cheapest step of `batch_size` images training `trainable` (None: the
    cheapest step there is, the classifier alone): one image at a time, with or without every block
    recomputed, and the reserve."""
    blocks = tuple(name for name, _ in named_blocks(model)[:-1])
    trainable = classifier_names(model) if trainable is None else trainable
    return min(counter.count(StepShape(batch_size, 1, recompute, "frozen", True), trainable).peak
               for recompute in ((), blocks)) / MiB / (1 - RESERVE) + spent_mb / (1 - RESERVE)


def fit_shape(counter: MemoryCounter, model, batch_size: int, budget: int, trainable=None,
              bn_statistics: str = "train", smallest_micro: int = 1, may_freeze: bool = True
              ) -> tuple[StepShape, MemoryCount, list[str]] | None:
    """The cheapest-to-run shape of a step of `batch_size` training `trainable` that fits, in
    micro-batches of at least `smallest_micro` images. More blocks recomputed keep less (nearly
    always): where every block recomputed does not fit, fewer are not counted. `may_freeze` False:
    statistics that train stay trained, so no micro-batch of fewer than MIN_STATISTICS images is
    taken (None where only such fit)."""
    base = StepShape(batch_size, bn_statistics=bn_statistics)
    count = _fits(counter, base, trainable, budget)
    if count is not None:
        return base, count, []
    # Past the step as asked every shape keeps less with lean saves, at the same arithmetic, in as few
    # of the earliest blocks as fit.
    blocks = [name for name, _ in named_blocks(model)[:-1]]
    found = _fewest_lean(counter, base, blocks, trainable, budget)
    if found is not None:
        shape, count = found
        return shape, count, lean_note(shape.lean, len(blocks))
    base = replace(base, lean=True)
    found = _fewest_recomputed(counter, base, blocks, trainable, budget, tried_without=True)
    if found is not None:
        shape, count = found
        return shape, count, [LEAN_NOTE, f"{len(shape.recompute)} of {len(blocks)} blocks recomputed in backward"]
    micro = batch_size
    while micro > 1 and (micro + 1) // 2 >= smallest_micro:
        micro = (micro + 1) // 2
        fewest = fewest_images(micro, batch_size)
        if not may_freeze and bn_statistics != "frozen" and fewest < MIN_STATISTICS:
            return None             # smaller micro-batches hold fewer images still
        frozen = bn_statistics == "frozen" or fewest < MIN_STATISTICS
        statistics = "frozen" if frozen else "train"
        plain = StepShape(batch_size, micro, (), statistics)
        # Where every block recomputed does not fit, nothing keeping more does: nothing else is counted.
        every = _fits(counter, replace(plain, recompute=tuple(blocks), lean=True), trainable, budget)
        fitted = None if every is None else (
            _fewest_lean(counter, plain, blocks, trainable, budget)
            or _fewest_recomputed(counter, replace(plain, lean=True), blocks, trainable, budget))
        if fitted is not None:
            shape, count = fitted
            notes = [*lean_note(shape.lean, len(blocks)),
                     f"micro-batches of {micro}, gradients accumulated over the batch of {batch_size}"]
            if shape.recompute:
                notes.append(f"{len(shape.recompute)} of {len(blocks)} blocks recomputed in backward")
            if frozen and bn_statistics != "frozen":
                notes.append(f"BatchNorm statistics frozen: a micro-batch holds as few as {fewest} images, "
                             f"fewer than {MIN_STATISTICS} (the running statistics normalise; scale and shift train)")
            elif not frozen:
                notes.append(f"BatchNorm layers train their statistics on micro-batches of {fewest}-{micro} "
                             f"images, not the whole batch")
            return shape, count, notes
    return None


def plan_memory(counter: MemoryCounter, model, batch_size: int, budget_mb: float, trainable=None,
                bn_statistics: str = "train", gains: dict | None = None, gains_source: dict | None = None,
                spent_mb: float = 0.0) -> MemoryPlan:
    """The plan for `budget_mb`, of which `spent_mb` the process already grew by (measured); `gains`
    (parameter name -> expected gain) makes it choose what trains (--sparsity budget), else `trainable`
    (names, None: every parameter) is kept."""
    budget = usable(budget_mb, spent_mb)
    asked = counter.count(StepShape(batch_size, bn_statistics=bn_statistics), trainable).peak / MiB
    chosen = None
    notes: list[str] = []
    if gains is not None:
        trainable, notes = choose_trainable(counter, model, batch_size, budget, gains, bn_statistics)
        if trainable is None:
            trainable = classifier_names(model)
            notes = [f"the classifier alone: nothing more fits micro-batches of {MIN_CHUNK_FOR_EVERYTHING} images"]
        chosen = sorted(trainable)
    fitted = fit_shape(counter, model, batch_size, budget, trainable, bn_statistics)
    if fitted is None:
        lowest = smallest_budget(counter, model, None, batch_size, spent_mb)
        spent = (f" ({spent_mb:.1f} MiB of it what the process grew by before the first step: torch's kernels "
                 f"loaded on first use and planning, measured)" if spent_mb else "")
        if gains is not None:
            raise InputError(f"--memory-budget {budget_mb:g}: no step fits; the smallest that does is "
                             f"{lowest:.1f} MiB (the classifier alone, one image at a time){spent}")
        own = smallest_budget(counter, model, trainable or {n for n, _ in model.named_parameters()}, batch_size,
                              spent_mb)
        raise InputError(f"--memory-budget {budget_mb:g}: no step of what this run trains fits; the smallest that "
                         f"does is {own:.1f} MiB (one image at a time); --sparsity budget "
                         f"fits down to {lowest:.1f} MiB (the classifier alone){spent}")
    shape, count, shape_notes = fitted
    return MemoryPlan(budget_mb, batch_size, shape.chunk, list(shape.recompute), shape.bn_statistics, count.mib(),
                      round(asked, 3), chosen, notes + shape_notes, gains_source, round(spent_mb, 3), shape.lean)


def choice_shapes(model, batch_size: int, bn_statistics: str) -> list[StepShape]:
    """The shapes a choice may train in, the cheapest to run first: the whole batch, the whole batch
    with lean saves, then with every block recomputed, then micro-batches (halved as fit_shape halves them) of at least
    MIN_CHUNK_FOR_EVERYTHING images with every block recomputed."""
    blocks = tuple(name for name, _ in named_blocks(model)[:-1])
    shapes = [StepShape(batch_size, bn_statistics=bn_statistics), StepShape(batch_size, 0, (), bn_statistics, True),
              StepShape(batch_size, 0, blocks, bn_statistics, True)]
    micro = batch_size
    while (micro + 1) // 2 >= MIN_CHUNK_FOR_EVERYTHING and micro > 1:
        micro = (micro + 1) // 2
        statistics = "frozen" if fewest_images(micro, batch_size) < MIN_STATISTICS else bn_statistics
        shapes.append(StepShape(batch_size, micro, blocks, statistics, True))
    return shapes


def everything_fits(counter: MemoryCounter, model, batch_size: int, budget: int, bn_statistics: str) -> bool:
    """Whether a step training everything fits with recomputed blocks or in micro-batches of at least
    MIN_CHUNK_FOR_EVERYTHING images (of any size where BatchNorm statistics are frozen): then
    everything trains, whatever each tensor's gain."""
    smallest = 1 if bn_statistics == "frozen" else MIN_CHUNK_FOR_EVERYTHING
    everything = {n for n, _ in model.named_parameters()}
    return fit_shape(counter, model, batch_size, budget, everything, bn_statistics, smallest) is not None


def choose_trainable(counter: MemoryCounter, model, batch_size: int, budget: int, gains: dict,
                     bn_statistics: str) -> tuple[set[str] | None, list[str]]:
    """What trains under the budget, by expected gain per byte (see the module's docstring). Each of
    choice_shapes is tried; a later shape (recomputing, or smaller micro-batches) wins only where its
    choice is expected to gain MORE_GAIN more than the best before it."""
    everything = {n for n, _ in model.named_parameters()}
    if everything_fits(counter, model, batch_size, budget, bn_statistics):
        return everything, ["everything trains: it fits with recomputed blocks or micro-batches"]
    best, best_gain, best_notes = None, 0.0, []
    for shape in choice_shapes(model, batch_size, bn_statistics):
        # A later shape's choice must gain MORE_GAIN more: depths that cannot are not counted.
        floor = -1.0 if best is None else best_gain * (1 + MORE_GAIN)
        chosen, gain, notes = choose_at(counter, model, shape, budget, gains, floor)
        if chosen is not None and (best is None or gain > best_gain * (1 + MORE_GAIN)):
            best, best_gain, best_notes = chosen, gain, notes
    return best, best_notes


def choose_at(counter: MemoryCounter, model, shape: StepShape, budget: int, gains: dict, floor: float = -1.0
              ) -> tuple[set[str] | None, float, list[str]]:
    """The best set a step of `shape` can train under the budget, its expected gain and a note: for
    each depth, the biases and norms from there on and the classifier, then weight tensors of those
    blocks by gain per byte, checked by exact count; the depth with the most gain wins. Only sets
    expected to gain more than `floor` are checked (the exact count can only drop tensors)."""
    names = [n for n, _ in model.named_parameters()]
    blocks = named_blocks(model)
    owner = {}
    for i, (_, block) in enumerate(blocks):
        for p in block.parameters():
            owner[id(p)] = i
    params = dict(model.named_parameters())
    block_of = {n: owner.get(id(p), 0) for n, p in params.items()}
    small = bias_norm_names(model)
    head = classifier_names(model)
    best, best_gain, best_notes = None, floor, []
    for depth in range(len(blocks) - 1, -1, -1):
        base = head | {n for n in small if block_of[n] >= depth}
        count = _fits(counter, shape, base, budget)
        if count is None:
            break                   # an earlier depth keeps at least as much
        left = budget - count.peak
        # A weight tensor adds its gradient and optimizer state (about twice its size and more with Adam);
        # the exact count below decides.
        per_byte = count.optimizer / max(1, sum(params[n].numel() * params[n].element_size() for n in base))
        candidates = sorted((n for n in names if n not in base and block_of[n] >= depth),
                            key=lambda n: gains.get(n, 0.0) / (params[n].numel() * params[n].element_size()),
                            reverse=True)
        chosen = set(base)
        for n in candidates:
            cost = params[n].numel() * params[n].element_size() * (2 + per_byte)
            if cost <= left:
                chosen.add(n)
                left -= cost
        gain = sum(gains.get(n, 0.0) for n in chosen)
        while gain > best_gain and _fits(counter, shape, chosen, budget) is None:
            extra = [n for n in chosen - base]
            if not extra:
                break
            chosen.discard(min(extra, key=lambda n: gains.get(n, 0.0)))
            gain = sum(gains.get(n, 0.0) for n in chosen)
        if gain > best_gain:
            best, best_gain = chosen, gain
            best_notes = [f"trains from block {depth} ({blocks[depth][0]}) on: {len(chosen)} of {len(names)} "
                          f"tensors, {sum(params[n].numel() for n in chosen):,} parameters"]
    return best, best_gain, best_notes
