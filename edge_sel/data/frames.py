"""A camera's stream: every sample becomes a scene filmed as F near-duplicate frames.

Frame f of the scene with stable id s has the stable id s x F + f (so the scene is id // F). It is
the scene's image moved by a few pixels (the camera's small motion, edges repeated) plus fresh
sensor noise; both draws come from a generator seeded by (seed, frame id) alone, so a frame's bytes
do not depend on which other frames are loaded.

Frames are made after the split, so a validation or test scene never has a frame in training. The
training split gets all F frames of each scene (or one, `dedup`: what a perfect de-duplicator would
keep); validation and test get one frame per scene (the frame is drawn per scene), because F
correlated copies of a scene add evaluation cost, not information.

The order a device sees its frames: `scene` (a camera: scenes in a seeded random order, each
scene's frames one after another) or `shuffled` (frames in a seeded random order).
"""

from __future__ import annotations

import zlib
from dataclasses import replace

import torch
import torch.nn.functional as F

from edge_sel.data.dataset import IndexedDataset

ORDERS = ("scene", "shuffled", "dedup")
NOISE_STD = 0.03        # sensor noise on [0, 1] pixels
MOTION_AT_32 = 3        # largest shift in pixels of a 32-pixel image (scaled with the image side)


def frame_generator(seed: int, frame_id: int) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"frame/{seed}/{frame_id}".encode()))


def max_motion(size: int) -> int:
    return max(1, round(MOTION_AT_32 * size / 32))


def render_frames(images: torch.Tensor, frame_ids: torch.Tensor, frames: int, seed: int) -> torch.Tensor:
    """uint8 frames: images[i] is scene frame_ids[i] // frames, moved and with sensor noise."""
    if len(images) == 0:
        return images
    m = max_motion(min(images.shape[-2:]))
    h, w = images.shape[-2:]
    padded = F.pad(images.float().div(255), (m, m, m, m), mode="replicate")
    out = torch.empty(images.shape, dtype=torch.float32)
    for i, fid in enumerate(frame_ids.tolist()):
        g = frame_generator(seed, fid)
        dy, dx = (torch.randint(-m, m + 1, (2,), generator=g) + m).tolist()
        out[i] = padded[i, :, dy: dy + h, dx: dx + w] + torch.randn(images.shape[1:], generator=g) * NOISE_STD
    return out.clamp(0, 1).mul(255).round().to(torch.uint8)


def chosen_frame(scene_ids: torch.Tensor, frames: int, seed: int) -> torch.Tensor:
    """The one frame (0..F-1) kept of each scene where only one is (validation, test, dedup)."""
    return torch.tensor([int(torch.randint(frames, (1,), generator=frame_generator(seed, -1 - int(s))))
                         for s in scene_ids.tolist()], dtype=torch.long)


def to_frames(ds: IndexedDataset, frames: int, seed: int, every_frame: bool, order: str) -> IndexedDataset:
    """The scenes of `ds` as frames: all F of each (every_frame) or the one chosen per scene."""
    scenes = ds.index.cpu().long()
    if every_frame:
        rows = torch.arange(len(ds)).repeat_interleave(frames)
        fids = scenes.repeat_interleave(frames) * frames + torch.arange(frames).repeat(len(ds))
    else:
        rows = torch.arange(len(ds))
        fids = scenes * frames + chosen_frame(scenes, frames, seed)
    images = render_frames(ds.images.cpu()[rows], fids, frames, seed).to(ds.images.device)
    out = replace(ds, images=images, labels=ds.labels[rows.to(ds.labels.device)], index=fids.to(ds.index.device),
                  frames=frames, stream_order=order)
    clean = getattr(ds, "clean_labels", None)
    if clean is not None:
        out.clean_labels = clean[rows.to(clean.device)]
    return out


def scene_of(ds: IndexedDataset) -> torch.Tensor:
    """Scene id of every sample (the sample's own id when the data is not a stream)."""
    return ds.index // max(1, ds.frames)


def stream_positions(ds: IndexedDataset, generator: torch.Generator) -> torch.Tensor:
    """One epoch's order of the training frames: scene by scene (a camera) or shuffled."""
    n = len(ds)
    if ds.frames <= 1 or ds.stream_order != "scene":
        return torch.randperm(n, generator=generator)
    scene = scene_of(ds).cpu()
    ids, inverse = torch.unique(scene, return_inverse=True)
    rank = torch.empty(len(ids), dtype=torch.long)
    rank[torch.randperm(len(ids), generator=generator)] = torch.arange(len(ids))
    # Scenes in a random order, a scene's frames in frame order.
    key = rank[inverse] * ds.frames + ds.index.cpu() % ds.frames
    return torch.argsort(key)
