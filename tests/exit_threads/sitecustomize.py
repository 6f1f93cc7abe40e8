"""Put on PYTHONPATH of a torchrun job by tests/test_ddp.py: each rank writes, as its interpreter
begins to exit, the names of the OS threads it still runs (one per line) to
$EDGE_SEL_TEST_EXIT_THREADS/rank<RANK>.txt. torchrun's own agent has no RANK and writes nothing."""

import atexit
import os


def _write_thread_names():
    pid = os.getpid()
    names = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                names.append(f.read().strip())
        except OSError:     # the thread ended while we looked
            pass
    with open(os.path.join(os.environ["EDGE_SEL_TEST_EXIT_THREADS"], f"rank{os.environ['RANK']}.txt"), "w") as f:
        f.write("\n".join(names) + "\n")


if "RANK" in os.environ and "EDGE_SEL_TEST_EXIT_THREADS" in os.environ:
    atexit.register(_write_thread_names)
