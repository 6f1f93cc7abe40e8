"""Where a budgeted CPU step's time goes: one trainable set's step timed whole, in micro-batches, with
its blocks recomputed or with lean saves (core/lean_saves.py), each with glibc's allocator as it is and as a budgeted run sets it (blocks of
64 KiB and more unmapped when freed: engine/machine/peak_memory.py). Each shape in a fresh process
(the allocator is set once a process), the median of a few steps after one untimed, with the minor
page faults and system seconds a step (getrusage). Huge pages for torch's large blocks as the command
line asks for them (edge_sel/huge_pages.py). Random images: the time of a step does not depend on what
it sees.

    python benchmarks/budget_step_parts.py --checkpoint CKPT --set bias+bn+classifier --rows 34 \\
        --micro-batch 9 --threads 1
    python benchmarks/budget_step_parts.py ... --micro-batch 1 --lean-blocks 5   # lean in the first 5 blocks
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from functools import partial

SHAPES = ("whole", "micro", "micro+recompute", "whole+unmap", "micro+unmap", "micro+recompute+unmap",
          "whole+lean", "micro+lean", "micro+lean+unmap")


def one_shape(args) -> dict:
    from edge_sel.huge_pages import large_blocks_in_huge_pages
    large_blocks_in_huge_pages()        # as the command line does, before torch allocates
    import torch
    torch.set_num_threads(args.threads)
    from edge_sel.core.memory import StepShape
    from edge_sel.engine.loop.plan_sets import fixed_sets
    from edge_sel.engine.machine import peak_memory
    from edge_sel.engine.machine.joule_plan import time_step
    from edge_sel.models import load_checkpoint
    from edge_sel.models.blocks import named_blocks
    if "unmap" in args.shape:
        peak_memory.allocator_for_budget()
    model, card = load_checkpoint(args.checkpoint)
    trainable = dict(fixed_sets(model, None)).get(args.set)
    if trainable is None:
        print(f"budget_step_parts: --set {args.set}: not a fixed set of plan_sets.fixed_sets without gains",
              file=sys.stderr)
        sys.exit(2)
    # Every block but the last recomputed, as a plan that recomputes them all does.
    blocks = tuple(name for name, _ in named_blocks(model)[:-1])
    recompute = blocks if "recompute" in args.shape else ()
    # Lean saves everywhere, or in the first --lean-blocks blocks only, as a plan that needs no more does.
    lean = "lean" in args.shape and (True if args.lean_blocks is None else blocks[:args.lean_blocks] or False)
    shape = StepShape(args.rows, args.micro_batch if "micro" in args.shape else 0, recompute, "frozen", lean=lean)
    x, y = torch.randn(args.rows, *card.input_shape), torch.randint(0, card.num_classes, (args.rows,))
    loss = torch.nn.CrossEntropyLoss(reduction="none")

    step = partial(time_step, model, x, y, shape, trainable, loss)      # the planner's own timed pass

    step()
    before, times = resource.getrusage(resource.RUSAGE_SELF), []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"shape": args.shape, "step_s": statistics.median(times),
            "faults": (after.ru_minflt - before.ru_minflt) / args.steps,
            "system_s": (after.ru_stime - before.ru_stime) / args.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--set", default="bias+bn+classifier",
                        help="a fixed set of engine/loop/plan_sets.fixed_sets (last-2, not last-k)")
    parser.add_argument("--rows", type=int, default=34, help="rows a step carries")
    parser.add_argument("--micro-batch", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="timed steps a shape")
    parser.add_argument("--lean-blocks", type=int, default=None,
                        help="the lean shapes' saves in the first this many blocks only (default: everywhere)")
    parser.add_argument("--shape", choices=SHAPES, help=argparse.SUPPRESS)     # one shape, in this process
    args = parser.parse_args()
    if args.shape:
        print(json.dumps(one_shape(args)))
        return
    rows = []
    for shape in SHAPES:
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--shape", shape],
                              capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr)
            sys.exit(done.returncode)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]["step_s"]
    where = "" if args.lean_blocks is None else f", lean saves in the first {args.lean_blocks} blocks"
    print(f"{args.set}, {args.rows} rows, micro-batches of {args.micro_batch}, {args.threads} thread(s){where}; measured")
    print("| step | s a step | x whole | minor faults a step | system s a step |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['step_s']:.3f} | {r['step_s'] / base:.2f} | {r['faults']:,.0f} | {r['system_s']:.3f} |")


if __name__ == "__main__":
    main()
