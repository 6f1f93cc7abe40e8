"""Pack an image folder into one file that `--dataset pack:PATH` reads (edge_sel/data/pack.py), or
unpack one back into a folder.

    python tools/pack_folder.py ../shared/data/cifar10-jpeg gpu-carry/cifar10.pack
    python tools/pack_folder.py --unpack gpu-carry/cifar10.pack /tmp/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edge_sel.data.pack import Pack, write_pack
from edge_sel.errors import InputError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="an image folder (train/ and test/, or class folders); "
                                                  "with --unpack, a pack")
    parser.add_argument("out", type=Path, help="the pack to write; with --unpack, the folder to write")
    parser.add_argument("--unpack", action="store_true", help="write a pack's files back out as a folder")
    args = parser.parse_args()
    t0 = time.perf_counter()
    try:
        if args.unpack:
            if args.out.exists():
                raise InputError(f"{args.out}: exists; unpack into a new folder")
            count = Pack(args.source).unpack(args.out)
            print(f"unpacked {count:,} images of {args.source} into {args.out} in {time.perf_counter() - t0:.1f} s")
            return 0
        info = write_pack(args.source, args.out)
    except InputError as e:
        print(f"pack_folder: {e}", file=sys.stderr)
        return 2
    except OSError as e:             # a full disk, a folder that cannot be written: the file it stopped at
        print(f"pack_folder: {e.filename or args.out}: cannot write ({e.strerror or e})", file=sys.stderr)
        return 1
    print(f"packed {info['images']:,} images ({', '.join(f'{k} {v:,}' for k, v in info['splits'].items())}) of "
          f"{args.source} into {args.out}: {info['bytes']:,} bytes ({info['bytes'] / 2**20:.1f} MiB) from "
          f"{info['encoded_bytes']:,} bytes of image files, {info['common_prefix']} bytes shared by every file "
          f"stored once; {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
