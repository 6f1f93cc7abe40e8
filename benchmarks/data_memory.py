"""What preparing a run's data costs in memory: the source loaded, split, subset and shifted as
`finetune` does it (DataOptions.load), in this process, read from /proc/self/status.

Prints the process's resident size (and its anonymous part) before and after, and its resident
high-water mark while the data was prepared. Anonymous pages are the process's own; file pages are
the mapped cache of a folder dataset, clean page cache the kernel may reclaim. A folder is held at
its own size and each batch resized to --image-size; the sizes held and given are printed.

    python benchmarks/data_memory.py --dataset folder:../shared/data/cifar10-jpeg --image-size 96 \\
        --shard 1/2 --subset 512 --test-subset 200 --shift corrupt=gaussian_noise:3
"""

from __future__ import annotations

import argparse

from edge_sel.core.memory import MiB, nbytes
from edge_sel.engine.machine.peak_memory import CLEAR_REFS, proc_status_bytes
from edge_sel.engine.runs.data_options import DataOptions

FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def status_mib() -> dict[str, float]:
    return {field: proc_status_bytes(field) / MiB for field in FIELDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--shard")
    parser.add_argument("--subset", type=int)
    parser.add_argument("--test-subset", type=int)
    parser.add_argument("--shift")
    parser.add_argument("--shift-seed", type=int, default=0)
    args = parser.parse_args()
    data = DataOptions(dataset=args.dataset, image_size=args.image_size, shard=args.shard, subset=args.subset,
                       test_subset=args.test_subset, shift=args.shift, shift_seed=args.shift_seed)
    before = status_mib()
    with open(CLEAR_REFS, "w") as f:     # the high-water mark from here
        f.write("5")
    splits = data.load()
    after = status_mib()
    sets = (splits.train, splits.val, splits.test, splits.test_clean)
    held = nbytes([t for ds in sets if ds is not None for t in (ds.images, ds.labels, ds.index)]) / MiB
    print(f"splits: train {len(splits.train)}, validation {len(splits.val)}, test {len(splits.test)}; "
          f"their tensors {held:,.1f} MiB")
    held_at, given_at = ("x".join(map(str, shape)) for shape in (splits.train.images.shape[1:], splits.train.input_shape))
    print(f"images held at {held_at}, given to the model at {given_at}; crop padding {data.crop_pad} px")
    print(f"resident before {before['VmRSS']:,.1f} MiB (anonymous {before['RssAnon']:,.1f}), "
          f"after {after['VmRSS']:,.1f} MiB (anonymous {after['RssAnon']:,.1f}, file {after['RssFile']:,.1f}); "
          f"high-water mark while preparing {after['VmHWM']:,.1f} MiB")


if __name__ == "__main__":
    main()
