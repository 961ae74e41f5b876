"""The 3D task's helpers around its scene: rendering views of it, the turntable path around it, and the
checkpoint entry of its edited image set. Reading and checking the scene is the data source's job
(:class:`csd_exp.data.sources.SceneSource`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from csd_exp.data.cameras import Cameras, turntable_cameras
from csd_exp.data.editable import EditableImageSet
from csd_exp.data.scene import SceneDataset
from csd_exp.render import RadianceField

CHECKPOINT_KEY = "scene3d"


@torch.no_grad()
def render_cameras(field: RadianceField, cameras: Cameras, batch: int = 8) -> tuple[torch.Tensor, ...]:
    """(rgb, depth, opacity) of deterministic renders of ``cameras`` on the field's device, ``batch``
    views at a time (bounded memory for any number of views)."""
    device = next(field.parameters()).device
    outs = [
        field.render(cameras[list(range(s, min(s + batch, len(cameras))))].to(device))
        for s in range(0, len(cameras), batch)
    ]
    return tuple(torch.cat([getattr(o, name) for o in outs]).float() for name in ("rgb", "depth", "opacity"))


def turntable_path(scene: SceneDataset, views: Sequence[int], num_views: int) -> Cameras:
    """A closed path of ``num_views`` novel views around the scene box centre at the median distance
    and elevation of ``views``, with their median focal lengths, starting at the first view's azimuth.

    Medians rather than means, so one far-away or steep photo does not pull the whole path off."""
    cams = scene.cameras[list(views)]
    center = scene.scene_box.mean(dim=0)
    offsets = cams.centers - center
    distance = offsets.norm(dim=-1)
    elevation = torch.rad2deg(torch.asin((offsets[:, 2] / distance.clamp_min(1e-8)).clamp(-1, 1)))
    start = float(torch.rad2deg(torch.atan2(offsets[0, 1], offsets[0, 0])))
    return turntable_cameras(
        center=center.tolist(),
        radius=float(distance.median()),
        elevation_deg=float(elevation.median()),
        num_views=num_views,
        width=scene.width,
        height=scene.height,
        fx=float(cams.fx.median()),
        fy=float(cams.fy.median()),
        start_azimuth_deg=start,
    )


def save_edits(checkpoint: dict, images: EditableImageSet, num_view_edits: int, heldout_pretrain: float | None) -> None:
    """Add ``checkpoint["scene3d"]``: the edited views (float32, so a resume is bit-exact), the edit counter
    and the held-out PSNR of the end of pre-training (the field itself is in ``state_dict``)."""
    edited = images.edited_indices
    checkpoint[CHECKPOINT_KEY] = {
        "edited_indices": edited,
        "edited_images": torch.stack([images.current(i) for i in edited]) if edited else None,
        "num_view_edits": num_view_edits,
        "heldout_psnr_pretrain": heldout_pretrain,
        "num_views": len(images),
    }


def restore_edits(checkpoint: dict, images: EditableImageSet) -> tuple[int, float | None]:
    """Put the checkpoint's edits back into ``images``; return (edit counter, pre-training held-out PSNR)."""
    state = checkpoint.get(CHECKPOINT_KEY)
    if state is None:
        raise ValueError("this checkpoint was not written by the scene3d task (no 'scene3d' entry)")
    if state["num_views"] != len(images):
        raise ValueError(
            f"the checkpoint's scene has {state['num_views']} views, this run's has "
            f"{len(images)}: resume with the same data.* settings"
        )
    images.reset()
    for index, image in zip(state["edited_indices"], state["edited_images"] if state["edited_indices"] else []):
        images.replace(int(index), image)
    return int(state["num_view_edits"]), state["heldout_psnr_pretrain"]
