"""How glibc's allocator serves a budgeted CPU run while it trains (engine/machine/peak_memory.py).

Where the count fits the budget HEAP_SLACK times over, the heap is kept: steps reuse the pages the
step before freed. Else blocks of 2 MiB and more are mapped on their own and unmapped when freed (on
huge pages where torch may use them: edge_sel/huge_pages.py) and smaller ones come from the heap. Before,
every block of 64 KiB and more was, and a step faulted each afresh: Lite0 at 96 px under 1/4 of full
fine-tuning's peak trained 2.8x as long as its unbudgeted twin, mobilenetv2 at 32 px under 150 MiB
4.6x. A heap kept whatever the count measured over both budgets (the heap's extra is no multiple of
the count, and a two-step probe of it measured half of what the run then held), so the run instead
watches its own measured training peak: past LARGE_BLOCK_GUARD of the budget it maps every block of
64 KiB and more from its next step (engine/loop/memory_records.py), and its record says from which."""

from __future__ import annotations

from edge_sel.core.memory import MiB
from edge_sel.engine.machine import peak_memory
from edge_sel.engine.machine.memory_plan import MemoryPlan


def keep_heap(budget_mb: float, plan: MemoryPlan) -> tuple[bool, int, str]:
    """Whether the run keeps the heap while training, the bytes of freed pages its top may keep, and
    the plan line's words."""
    counted = plan.counted.get("peak_mb")
    room = max(0.0, budget_mb - plan.spent_mb - (counted or 0.0))      # the budget's room beside the count
    if counted is not None and peak_memory.heap_fits(counted, budget_mb - plan.spent_mb):
        return True, int(room * MiB), (f"glibc's heap kept while training, with at most {room:.1f} MiB of freed "
                                       f"pages at its top: the count fits the budget {peak_memory.HEAP_SLACK:g} "
                                       f"times over")
    guard = peak_memory.LARGE_BLOCK_GUARD
    return False, 0, (f"blocks of {peak_memory.LARGE_BLOCK // MiB} MiB and more mapped on their own while training "
                      f"and unmapped when freed, smaller ones from the heap (the heap is kept where the count fits "
                      f"the budget {peak_memory.HEAP_SLACK:g} times over); where the measured training peak passes "
                      f"{guard:.0%} of the budget, every block of 64 KiB and more from the next step")
