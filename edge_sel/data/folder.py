"""Image folders (one subfolder per class, JPEG/PNG) decoded once into a uint8 cache."""

from __future__ import annotations

import hashlib
import json
import math
import io
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from edge_sel.core.own_files import NotOurs, open_own, private_mode, set_aside
from edge_sel.core.temp_file import replacing
from edge_sel.data.dataset import IndexedDataset
from edge_sel.errors import InputError, parse_json

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CONTACT_SHEET = "contact_sheet.png"     # `edge-sel shift` writes it beside the image folder it makes
OWN_OUTPUTS = {CONTACT_SHEET}


def not_an_input(name: str) -> str | None:
    """Why a file in an image folder is not one of its images: a hidden file (macOS's `._*`
    resource forks among them, which carry an image suffix and no image) or edge-sel's own output."""
    if name.startswith("."):
        return "hidden"
    return "edge-sel's own output" if name in OWN_OUTPUTS else None


def skipped_note(where: Path, skipped: list[str]) -> str | None:
    """One line that counts the files skipped under `where` (paths relative to it) and names a
    few of each kind, or None when none was."""
    if not skipped:
        return None
    kinds: dict[str, list[str]] = {}
    for rel in skipped:
        kind = next(k for k in map(not_an_input, rel.split("/")) if k)
        kinds.setdefault(kind, []).append(rel)
    said = "; ".join(f"{len(rels)} {kind} ({', '.join(rels[:3])}{', ...' if len(rels) > 3 else ''})"
                     for kind, rels in kinds.items())
    return f"{where}: {len(skipped)} file{'s' if len(skipped) > 1 else ''} skipped, not input images: {said}"


def cache_dir() -> Path:
    return Path(os.environ.get("EDGE_SEL_CACHE", Path.home() / ".cache" / "edge-sel"))


def list_class_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(relative file path, label)]) in a sorted, stable order."""
    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise InputError(f"{root}: no class subfolders found (expected {root}/<class>/<image>.jpg)")
    files, skipped = [], []
    for label, name in enumerate(classes):
        images = sorted(n for n in os.listdir(root / name) if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES)
        skipped += [f"{name}/{n}" for n in images if not_an_input(n)]
        names = [n for n in images if not not_an_input(n)]
        if not names:
            raise InputError(f"{root / name}: class folder has no images (.jpg/.png)")
        files += [(f"{name}/{n}", label) for n in names]
    note = skipped_note(root, skipped)
    if note:
        warnings.warn(note)
    return classes, files


def first_image_size(root: Path) -> tuple[int, int]:
    """(width, height) of a class folder's first image, the size the folder is decoded at without
    --image-size: read alone, before the whole folder is decoded."""
    from PIL import Image
    _, files = list_class_folder(root)
    first = root / files[0][0]
    try:
        with Image.open(first) as im:
            return im.size
    except OSError as e:
        raise InputError(f"{first}: cannot decode image ({e})") from None


def _decode(args: tuple[str | tuple[str, bytes], tuple[int, int] | None, str]) -> np.ndarray | str:
    source, size, mode = args   # a file, or (name, encoded bytes) from a pack; size: (width, height) or None
    from PIL import Image, UnidentifiedImageError
    name, opened = (source[0], io.BytesIO(source[1])) if isinstance(source, tuple) else (source, source)
    try:
        with Image.open(opened) as im:
            im = im.convert(mode)
            if size is not None and im.size != size:
                im = im.resize(size, Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return f"{name}: cannot decode image ({e.__class__.__name__}: {e})"
    return arr[:, :, None] if arr.ndim == 2 else arr


class MixedSizes(Exception):
    """A folder's images are not all of one size (the first mismatch, as a refusal's words)."""


def _decode_all(root: Path, files: list[tuple[str, int]], image_size) -> np.ndarray:
    return decode_sources(root, [str(root / rel) for rel, _ in files], image_size)


def decode_sources(where, sources: list, image_size) -> np.ndarray:
    """N x C x H x W uint8 from image files or (name, encoded bytes) pairs. image_size: None (all
    images must share the first one's size), S, or (width, height)."""
    from PIL import Image
    first = sources[0]
    first_name = first[0] if isinstance(first, tuple) else first
    try:
        with Image.open(io.BytesIO(first[1]) if isinstance(first, tuple) else first) as im:
            mode = "L" if im.mode in ("L", "1", "I;16") else "RGB"
            size = im.size
    except OSError as e:
        raise InputError(f"{first_name}: cannot decode image ({e})") from None
    resize = None
    if image_size is not None:
        resize = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
        size = resize
    jobs = [(source, resize, mode) for source in sources]
    with decoding_progress(where, len(jobs)) as advance:
        if len(jobs) < 2000 or (os.cpu_count() or 1) < 2:
            decoded = [advance(_decode(j)) for j in jobs]
        else:
            with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
                decoded = [advance(arr) for arr in pool.map(_decode, jobs, chunksize=512)]
    for arr, source in zip(decoded, sources):
        if isinstance(arr, str):
            raise InputError(arr)
        if arr.shape[:2] != (size[1], size[0]):
            name = source[0] if isinstance(source, tuple) else source
            raise MixedSizes(f"{name}: image is {arr.shape[1]}x{arr.shape[0]}, the first "
                             f"image is {size[0]}x{size[1]}; pass --image-size to resize all images")
    return np.ascontiguousarray(np.stack(decoded).transpose(0, 3, 1, 2))


PROGRESS_FROM = 2000      # images: a folder this large takes seconds to decode (CIFAR-10's 60,000: a minute)
PROGRESS_LINES = 10       # without a terminal: a line at each tenth


@contextmanager
def decoding_progress(root: Path, total: int):
    """Progress of a folder's first decode, on stderr: a bar on a terminal, else a flushed line as
    it starts and at each tenth (a journal would otherwise show nothing for a minute). Yields a
    function that counts one decoded image and passes it through."""
    if total < PROGRESS_FROM:
        yield lambda image: image
        return
    if sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=total, desc=f"decoding {root}", unit="img", leave=False, dynamic_ncols=True)
        try:
            yield lambda image: (bar.update(1), image)[1]
        finally:
            bar.close()
        return
    print(f"edge-sel: decoding {total:,} images of {root} once (kept decoded in {cache_dir()})",
          file=sys.stderr, flush=True)
    done = [0]
    step = -(-total // PROGRESS_LINES)

    def advance(image):
        done[0] += 1
        if done[0] % step == 0 or done[0] == total:
            print(f"edge-sel: decoded {done[0]:,} of {total:,} images of {root}", file=sys.stderr, flush=True)
        return image
    yield advance


def _listing(root: Path, files: list[tuple[str, int]]) -> bytes:
    # Each file's name, label, size, modification time, inode and change time (ns): cp -p, rsync -t
    # and tar x write new bytes and set the old mtime back, but a rewrite in place moves the change
    # time (which no program sets) and a replaced file is a new inode; any added, removed or renamed
    # file changes the list (one stat per file, no read).
    base, lines = str(root), []
    for rel, label in files:            # strings, not Paths: 50,000 files in about the time of their stats
        st = os.stat(os.path.join(base, rel))
        lines.append(f"{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}\n")
    return "".join(lines).encode()


def _cache_key(root: Path, files: list[tuple[str, int]], image_size, listing: bytes | None = None) -> str:
    """The folder's key at `image_size`; `listing` (_listing's, when the caller has it) saves the stats."""
    h = hashlib.sha256(str(root.resolve()).encode())
    h.update(f"{image_size}\n".encode())
    h.update(_listing(root, files) if listing is None else listing)
    return h.hexdigest()[:24]


def cache_path(key: str) -> Path:
    return cache_dir() / f"{key}.images"


def cache_file(root: Path, files: list[tuple[str, int]], image_size) -> Path:
    return cache_path(f"folder-{_cache_key(root, files, image_size)}")


# A cache file: one header block (this line, then JSON with the images' shape and the SHA-256 of
# the bytes after the block), then the decoded images, uint8, N x C x H x W.
CACHE_FORMAT = b"edge-sel decoded images 1\n"
HEADER_BYTES = 4096


def write_cache(path: Path, images: np.ndarray) -> None:
    """Written under a temporary name, fsynced, then renamed: a crash leaves the old file or none,
    and a file torn all the same (a disk that lies) fails its digest."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    payload = memoryview(images.reshape(-1))
    meta = {"shape": list(images.shape), "sha256": hashlib.sha256(payload).hexdigest()}
    head = CACHE_FORMAT + json.dumps(meta).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as f:          # never through a name planted in a shared cache folder
        private_mode(f.fileno())        # a cache file others can write is set aside when read
        f.write(head.ljust(HEADER_BYTES - 1) + b"\n")
        f.write(payload)


def read_cache(path: Path, count: int) -> np.ndarray:
    """The `count` images kept at `path`, mapped copy-on-write (only what a run selects becomes
    resident; a write into them stays in this process). Raises FileNotFoundError when there is
    none, NotOurs where it is a link or not this user's alone (core/own_files.py), ValueError or
    OSError when it is not whole: another format, another size, or bytes that do not match its digest
    (read once, streamed, to check). What is mapped is the file checked, not its name again."""
    fd = open_own(path)
    if fd is None:
        raise FileNotFoundError(path)
    with os.fdopen(fd, "rb") as f:
        head = f.read(HEADER_BYTES)
        if len(head) != HEADER_BYTES or not head.startswith(CACHE_FORMAT):
            raise ValueError("not a decoded-image cache of this version")
        meta = parse_json(head[len(CACHE_FORMAT):])
        shape = tuple(int(v) for v in meta["shape"])
        if len(shape) != 4 or shape[0] != count:
            raise ValueError(f"holds {shape[0] if shape else 0} images, the folder {count}")
        size = os.fstat(f.fileno()).st_size - HEADER_BYTES
        if size != math.prod(shape):
            raise ValueError(f"{size:,} bytes of images, {math.prod(shape):,} expected")
        digest = hashlib.sha256()
        for chunk in iter(lambda: f.read(8 << 20), b""):
            digest.update(chunk)
        if digest.hexdigest() != meta["sha256"]:
            raise ValueError("its images do not match its digest")
        return np.memmap(f, dtype=np.uint8, mode="c", offset=HEADER_BYTES, shape=shape)


def cached_images(key: str, count: int, build, use_cache: bool = True, where=None) -> np.ndarray:
    """`build()`'s images, kept decoded in the cache under `key` (a file of `count` images, checked
    by its digest: a torn or damaged one is said in one line and rebuilt)."""
    cached = cache_path(key)
    if use_cache:
        try:
            return read_cache(cached, count)
        except FileNotFoundError:
            pass
        except NotOurs as e:            # another user's, or one others can write: never read
            set_aside(str(e), f"decoding {where or key} again")
        except (OSError, ValueError, KeyError, TypeError) as e:     # torn or damaged: rebuilt, not trusted
            print(f"edge-sel: {cached}: damaged decoded-image cache ({e}); decoding {where or key} again",
                  file=sys.stderr, flush=True)
    images = build()
    if use_cache:
        try:
            write_cache(cached, images)
        except OSError as e:    # a read-only home, another user's file that stays theirs: a re-decode next time
            warnings.warn(f"could not keep the decoded images in {cached}: {e.strerror or e}; going on without "
                          f"keeping them")
    return images


def decode_own_size(where, decode, image_size, key_of, count: int, use_cache: bool = True) -> np.ndarray:
    """Images decoded once at their own size (`decode(None)`) and cached so; a source of mixed
    sizes, which no single array holds at their own sizes, is decoded at `image_size` (S or (width,
    height)) instead, under a cache key of its own (`key_of(image_size)`), and refused without one."""
    own, mixed = key_of(None), key_of(("mixed sizes", image_size))
    if use_cache and image_size is not None and cache_path(mixed).exists():
        return cached_images(mixed, count, lambda: decode(image_size), use_cache, where)
    try:
        return cached_images(own, count, lambda: decode(None), use_cache, where)
    except MixedSizes as e:
        if image_size is None:
            raise InputError(str(e)) from None
        return cached_images(mixed, count, lambda: decode(image_size), use_cache, where)


def load_class_folder(root: Path, name: str, image_size=None, use_cache: bool = True) -> IndexedDataset:
    """A class folder decoded once at its own size and cached so; the caller gives a model the
    images at its size (IndexedDataset.at_size), a batch at a time (decode_own_size: a folder of
    mixed sizes is decoded at `image_size`)."""
    classes, files = list_class_folder(root)
    listing = _listing(root, files)         # stat every file once, for both keys
    images = decode_own_size(root, lambda size: _decode_all(root, files, size), image_size,
                             lambda size: f"folder-{_cache_key(root, files, size, listing)}", len(files), use_cache)
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    return IndexedDataset(torch.from_numpy(images), labels, torch.arange(len(files), dtype=torch.long), classes, name)
