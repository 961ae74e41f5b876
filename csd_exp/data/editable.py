"""The Instruct-NeRF2NeRF dataset-update buffer: the 3D task's editable copy of a scene's views."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from csd_exp.data.images import save_image
from csd_exp.data.scene import SceneDataset, SceneError


@dataclass
class EditableImageSet:
    """The Instruct-NeRF2NeRF dataset-update buffer.

    Holds a private copy of the original views and a separate *current* copy that edits replace one
    view at a time. The originals are never modified (and are cloned on the way in and out), and
    :meth:`save` refuses to write inside ``protected`` folders (the scene folder).

    Build with :meth:`from_scene`. Index by dataset view index.
    """

    originals: torch.Tensor = field(repr=False)
    names: list[str] = field(default_factory=list, repr=False)
    protected: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.originals.ndim != 4 or self.originals.shape[1] != 3:
            raise SceneError(f"originals must be (V, 3, H, W), got {tuple(self.originals.shape)}")
        self.originals = self.originals.detach().to("cpu", torch.float32).clone()
        self._current = self.originals.clone()
        self._edited: set[int] = set()
        if not self.names:
            self.names = [f"view_{i:05d}" for i in range(len(self))]
        if len(self.names) != len(self):
            raise SceneError(f"{len(self.names)} names for {len(self)} views")
        self.protected = [Path(p).resolve() for p in self.protected]

    @classmethod
    def from_scene(cls, scene: SceneDataset) -> EditableImageSet:
        names = [
            f"view_{i:05d}" if p is None else f"view_{i:05d}_{Path(p).stem}" for i, p in enumerate(scene.image_paths)
        ]
        protected = [scene.source] if scene.source is not None else []
        protected += sorted({Path(p).parent for p in scene.image_paths if p is not None})
        return cls(scene.images, names, protected)

    def __len__(self) -> int:
        return self.originals.shape[0]

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"view index {index} out of range for {len(self)} views")
        return index % len(self)

    @property
    def edited_indices(self) -> list[int]:
        return sorted(self._edited)

    def original(self, index: int) -> torch.Tensor:
        """A copy of the unedited view ``(3, H, W)``."""
        return self.originals[self._check_index(index)].clone()

    def current(self, index: int) -> torch.Tensor:
        """A copy of the current (edited or original) view ``(3, H, W)``."""
        return self._current[self._check_index(index)].clone()

    def replace(self, index: int, image: torch.Tensor) -> None:
        """Set view ``index`` to ``image`` (``(3, H, W)`` or ``(1, 3, H, W)``, values in [0, 1])."""
        index = self._check_index(index)
        image = image.detach().to("cpu", torch.float32)
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if tuple(image.shape) != tuple(self.originals.shape[1:]):
            expected = tuple(self.originals.shape[1:])
            raise SceneError(f"edited view {index} has shape {tuple(image.shape)}, expected {expected}")
        if not torch.isfinite(image).all():
            raise SceneError(f"edited view {index} contains NaN or inf")
        self._current[index] = image.clamp(0.0, 1.0)
        self._edited.add(index)

    def reset(self, index: int | None = None) -> None:
        """Restore one view (or all views) to the original."""
        indices = range(len(self)) if index is None else [self._check_index(index)]
        for i in indices:
            self._current[i] = self.originals[i]
            self._edited.discard(i)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the edited views as PNGs plus ``edits.json`` into ``folder`` (e.g. ``<run>/edited``).

        Refuses any folder inside a protected (scene) folder. Returns ``folder``.
        """
        folder = Path(folder)
        resolved = folder.resolve()
        for root in self.protected:
            if resolved == root or root in resolved.parents:
                raise SceneError(f"refusing to write edited images into the scene folder {root} (target {folder})")
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"num_views": len(self), "edited": {}}
        for i in self.edited_indices:
            name = f"{self.names[i]}.png"
            save_image(self._current[i], folder / name)
            manifest["edited"][str(i)] = name
        tmp = folder / ".edits.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        os.replace(tmp, folder / "edits.json")
        return folder
