"""Scene data: sample scene, nerfstudio / Blender readers, bad input, editable image sets."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from csd_exp.data.editable import EditableImageSet
from csd_exp.data.sample_scene import make_sample_scene
from csd_exp.data.scene import SceneError, read_scene_image
from csd_exp.data.scene_formats import load_blender_scene, load_nerfstudio_scene, load_scene, write_nerfstudio_scene
from csd_exp.render.reprojection import reprojection_error


def _small(**kwargs):
    return make_sample_scene(num_views=6, num_val=2, size=(16, 16), **kwargs)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*"))}


@pytest.fixture()
def ns_scene(tmp_path):
    """A freshly written small nerfstudio scene: (folder, in-memory dataset)."""
    folder = tmp_path / "scene"
    return folder, _small(out_dir=folder)


# ---------------------------------------------------------------------------------- sample scene
def test_default_sample_scene_shape_split_and_determinism(tmp_path):
    # the CPU-sized sample the docs measure with: 24 training + 6 held-out views at 48x48
    scene = make_sample_scene(num_views=30, num_val=6, size=(48, 48), seed=0, out_dir=tmp_path / "default")
    assert scene.images.shape == (30, 3, 48, 48) and scene.depths.shape == (30, 1, 48, 48)
    assert len(scene.train_indices) == 24 and len(scene.val_indices) == 6
    assert set(scene.train_indices) | set(scene.val_indices) == set(range(30))
    assert 0.0 <= scene.images.min() and scene.images.max() <= 1.0
    torch.testing.assert_close(scene.images * 255, (scene.images * 255).round())  # 8-bit exact
    covered = (scene.depths > 0).float().mean().item()
    assert 0.3 < covered < 0.95  # object and ground fill most of the frame, background remains
    scene.cameras.validate()
    reloaded = load_scene(tmp_path / "default")
    assert torch.equal(reloaded.images, scene.images) and reloaded.val_indices == scene.val_indices
    again = make_sample_scene(num_views=6, num_val=2, size=(16, 16), seed=0)
    other = make_sample_scene(num_views=6, num_val=2, size=(16, 16), seed=1)
    assert torch.equal(again.images, _small().images)
    assert not torch.allclose(again.cameras.c2w, other.cameras.c2w)


def test_sample_scene_views_agree_through_exact_depth():
    scene = make_sample_scene(num_views=12, num_val=0, size=(48, 48))
    cams, img, dep = scene.cameras, scene.images, scene.depths
    good = reprojection_error(img[0], dep[0], cams[0], img[1], cams[1], depth_b=dep[1])
    shifted = reprojection_error(img[0], dep[0], cams[0], img[1].roll(3, dims=-1), cams[1], depth_b=dep[1])
    assert good < 0.05 and shifted > 3 * good, (good, shifted)


# ---------------------------------------------------------------------------------- nerfstudio
def test_nerfstudio_round_trip_is_exact(ns_scene):
    folder, original = ns_scene
    meta = json.loads((folder / "transforms.json").read_text())
    assert meta["frames"][0]["file_path"] == "images/frame_00000.png" and "fl_x" in meta
    loaded = load_nerfstudio_scene(folder)
    assert torch.equal(loaded.images, original.images)
    torch.testing.assert_close(loaded.cameras.c2w, original.cameras.c2w)
    for key in ("fx", "fy", "cx", "cy"):
        torch.testing.assert_close(getattr(loaded.cameras, key), getattr(original.cameras, key))
    assert (loaded.cameras.width, loaded.cameras.height) == (16, 16)
    assert loaded.train_indices == original.train_indices and loaded.val_indices == original.val_indices
    torch.testing.assert_close(loaded.scene_box, original.scene_box)
    assert loaded.image_paths == original.image_paths and loaded.source == folder
    auto = load_scene(folder)
    assert torch.equal(auto.images, loaded.images)
    assert torch.equal(load_scene(folder / "transforms.json").images, loaded.images)


def test_loading_never_writes_into_the_scene_folder(ns_scene):
    folder, _ = ns_scene
    before = _snapshot(folder)
    load_scene(folder, downscale=2, max_views=3)
    assert _snapshot(folder) == before


def test_downscale_and_max_views(ns_scene):
    folder, original = ns_scene
    half = load_nerfstudio_scene(folder, downscale=2)
    assert half.images.shape == (6, 3, 8, 8)
    torch.testing.assert_close(half.images, torch.nn.functional.avg_pool2d(original.images, 2))
    torch.testing.assert_close(half.cameras.fx, original.cameras.fx / 2)
    torch.testing.assert_close(half.cameras.cx, original.cameras.cx / 2)
    few = load_nerfstudio_scene(folder, max_views=3)
    assert len(few) == 3
    torch.testing.assert_close(few.cameras.c2w[0], original.cameras.c2w[0])
    torch.testing.assert_close(few.cameras.c2w[-1], original.cameras.c2w[-1])


def test_per_frame_intrinsics_angle_fallback_3x4_and_default_split(ns_scene, tmp_path):
    folder, original = ns_scene
    meta = json.loads((folder / "transforms.json").read_text())
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h", "train_filenames", "val_filenames", "scene_box"):
        meta.pop(key)
    fov = 2 * math.atan(0.5 * 16 / original.cameras.fx[0].item())
    meta["camera_angle_x"] = fov  # instant-ngp style global intrinsics ...
    meta["frames"][1].update(fl_x=30.0, fl_y=31.0, cx=7.0, cy=9.0)  # ... overridden per frame
    meta["frames"][2]["transform_matrix"] = meta["frames"][2]["transform_matrix"][:3]
    meta["frames"][3]["file_path"] = str((folder / meta["frames"][3]["file_path"]).resolve())
    (folder / "transforms.json").write_text(json.dumps(meta))
    loaded = load_nerfstudio_scene(folder)
    assert loaded.cameras.fx[0].item() == pytest.approx(original.cameras.fx[0].item(), rel=1e-5)
    assert loaded.cameras.cx[0].item() == 8.0
    assert loaded.cameras.fx[1].item() == 30.0 and loaded.cameras.fy[1].item() == 31.0
    assert (loaded.cameras.cx[1].item(), loaded.cameras.cy[1].item()) == (7.0, 9.0)
    torch.testing.assert_close(loaded.cameras.c2w[2], original.cameras.c2w[2])
    assert torch.equal(loaded.images[3], original.images[3])  # absolute path accepted
    assert loaded.train_indices == list(range(6)) and loaded.val_indices == []  # nerfstudio: ceil(0.9 * 6) = 6
    # the box is estimated from the ring of cameras looking at the origin
    centre = loaded.scene_box.mean(0)
    assert centre.abs().max().item() < 0.3


# ---------------------------------------------------------------------------------- Blender
def _write_blender(folder: Path, scene, splits: dict) -> None:
    folder.mkdir()
    fov = 2 * math.atan(0.5 * scene.width / scene.cameras.fx[0].item())
    for split, indices in splits.items():
        (folder / split).mkdir()
        frames = []
        for k, i in enumerate(indices):
            rgb = (scene.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            white = (rgb == 255).all(axis=-1)
            rgba = np.concatenate([rgb, np.where(white, 0, 255).astype(np.uint8)[..., None]], axis=-1)
            rgba[white, :3] = 0  # transparent pixels carry black colour, as Blender writes them
            Image.fromarray(rgba).save(folder / split / f"r_{k}.png")
            frames.append(
                {"file_path": f"./{split}/r_{k}", "rotation": 0.1, "transform_matrix": scene.cameras.c2w[i].tolist()}
            )
        (folder / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": fov, "frames": frames}))


def test_blender_scene_loads_with_alpha_over_white(tmp_path):
    scene = _small()
    folder = tmp_path / "lego"
    _write_blender(folder, scene, {"train": [0, 1, 2, 3], "val": [4, 5]})
    before = _snapshot(folder)
    loaded = load_blender_scene(folder)
    assert len(loaded) == 6 and loaded.train_indices == [0, 1, 2, 3] and loaded.val_indices == [4, 5]
    assert torch.equal(loaded.images, scene.images)
    torch.testing.assert_close(loaded.cameras.c2w, scene.cameras.c2w)
    torch.testing.assert_close(loaded.cameras.fx, scene.cameras.fx)
    torch.testing.assert_close(loaded.cameras.cx, torch.full((6,), 8.0))
    assert loaded.image_paths[0] == folder / "train" / "r_0.png"
    torch.testing.assert_close(loaded.scene_box, torch.tensor([[-1.5] * 3, [1.5] * 3]))
    black = load_blender_scene(folder, holdout_split=None, background=(0.0, 0.0, 0.0))
    assert len(black) == 4 and black.val_indices == []
    assert black.images.min().item() == 0.0 and black.images.mean() < loaded.images[:4].mean()
    assert torch.equal(load_scene(folder).images, loaded.images)
    assert len(load_scene(folder / "transforms_val.json", holdout_split=None)) == 2
    assert _snapshot(folder) == before


# ---------------------------------------------------------------------------------- bad input
def _edit_json(folder: Path, edit) -> None:
    path = folder / "transforms.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _scale_rotation(meta):
    m = np.array(meta["frames"][2]["transform_matrix"])
    m[:3, :3] *= 1.5
    meta["frames"][2]["transform_matrix"] = m.tolist()


def _nan_pose(meta):
    meta["frames"][1]["transform_matrix"][0][3] = float("nan")


def _resize_one_image(folder: Path) -> None:
    Image.new("RGB", (20, 16)).save(folder / "images" / "frame_00003.png")


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda f: _edit_json(f, lambda m: m.update(frames=[])), r"transforms\.json: no cameras"),
        (lambda f: _edit_json(f, lambda m: m.pop("frames")), "no cameras"),
        (
            lambda f: _edit_json(f, lambda m: m["frames"][0].pop("transform_matrix")),
            r"frame_00000\.png\) has no 'transform_matrix'",
        ),
        (lambda f: (f / "images" / "frame_00004.png").unlink(), r"missing: .*frame_00004\.png"),
        (_resize_one_image, r"mixed sizes.*frame_0000[03]\.png.*frame_0000[03]\.png"),
        (lambda f: _edit_json(f, _scale_rotation), r"view 2 \(images/frame_00002\.png\) rotation is not orthonormal"),
        (lambda f: _edit_json(f, _nan_pose), r"frame_00001\.png\) has a non-finite"),
        (lambda f: _edit_json(f, lambda m: m.update(fl_x=0.0)), "non-positive focal length fx"),
        (lambda f: _edit_json(f, lambda m: m.update(k1=0.1)), r"distortion k1"),
        (lambda f: _edit_json(f, lambda m: m.update(w=32)), r"declares size 32x16 but the image is 16x16"),
        (lambda f: _edit_json(f, lambda m: m.update(camera_model="OPENCV_FISHEYE")), "not supported"),
        (lambda f: _edit_json(f, lambda m: m["frames"][0].update(transform_matrix=[[1, 0], [0, 1]])), "expected 4x4"),
        (lambda f: (f / "transforms.json").write_text("{not json"), "not valid JSON"),
        (
            lambda f: (f / "images" / "frame_00001.png").write_bytes(b"not a png"),
            r"cannot read image .*frame_00001\.png",
        ),
    ],
)
def test_bad_nerfstudio_input_raises_clear_errors(ns_scene, corrupt, message):
    folder, _ = ns_scene
    corrupt(folder)
    with pytest.raises(SceneError, match=message) as info:
        load_scene(folder)
    assert str(folder) in str(info.value)


def test_folder_without_cameras(tmp_path):
    (tmp_path / "empty").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "empty" / "a.png")
    with pytest.raises(SceneError, match="no cameras"):
        load_scene(tmp_path / "empty")
    with pytest.raises(SceneError, match="not found"):
        load_scene(tmp_path / "missing")
    with pytest.raises(SceneError, match="no cameras"):
        load_nerfstudio_scene(tmp_path / "empty")


def test_bad_blender_input(tmp_path):
    scene = _small()
    folder = tmp_path / "bl"
    _write_blender(folder, scene, {"train": [0, 1]})
    meta = json.loads((folder / "transforms_train.json").read_text())
    meta.pop("camera_angle_x")
    (folder / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(SceneError, match=r"transforms_train\.json: no 'camera_angle_x'"):
        load_blender_scene(folder)
    meta["camera_angle_x"] = 0.0
    (folder / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(SceneError, match=r"r_0\) has non-finite fx"):
        load_blender_scene(folder)
    with pytest.raises(SceneError, match=r"transforms_test\.json: no cameras"):
        load_blender_scene(folder, split="test")


def test_writer_refuses_to_overwrite_and_leaves_no_debris(ns_scene, tmp_path):
    folder, scene = ns_scene
    before = _snapshot(folder)
    with pytest.raises(SceneError, match="not empty"):
        write_nerfstudio_scene(scene, folder)
    assert _snapshot(folder) == before
    empty = tmp_path / "empty_target"
    empty.mkdir()
    write_nerfstudio_scene(scene, empty)
    assert (empty / "transforms.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# ---------------------------------------------------------------------------------- editable set
def test_editable_image_set_keeps_originals_and_saves_outside_the_scene(ns_scene, tmp_path):
    folder, _ = ns_scene
    scene = load_scene(folder)
    pristine = scene.images.clone()
    before = _snapshot(folder)
    edits = EditableImageSet.from_scene(scene)
    assert len(edits) == 6 and edits.edited_indices == []
    new = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    edits.replace(2, new)
    edits.replace(4, new[None] * 0 + 0.25)
    assert edits.edited_indices == [2, 4]
    torch.testing.assert_close(edits.current(2), new)
    assert torch.equal(edits.original(2), pristine[2])
    assert torch.equal(edits.current(0), pristine[0])
    edits.current(2).zero_()  # returned copies cannot corrupt the buffer
    edits.original(2).zero_()
    torch.testing.assert_close(edits.current(2), new)
    assert torch.equal(edits.original(2), pristine[2])
    assert torch.equal(scene.images, pristine)
    assert torch.equal(edits.current(4), torch.full((3, 16, 16), 0.25))

    with pytest.raises(SceneError, match="scene folder"):
        edits.save(folder / "edited")
    with pytest.raises(SceneError, match="scene folder"):
        edits.save(folder)
    out = edits.save(tmp_path / "run" / "edited")
    written = sorted(p.name for p in out.iterdir())
    assert written == ["edits.json", "view_00002_frame_00002.png", "view_00004_frame_00004.png"]
    assert _snapshot(folder) == before

    manifest = json.loads((out / "edits.json").read_text())
    assert manifest == {"num_views": 6, "edited": {"2": written[1], "4": written[2]}}
    torch.testing.assert_close(read_scene_image(out / written[1], (1.0, 1.0, 1.0)), new, atol=1 / 255, rtol=0)
    edits.reset(2)
    assert edits.edited_indices == [4] and torch.equal(edits.current(2), pristine[2])
    edits.reset()
    assert edits.edited_indices == []


def test_editable_image_set_rejects_bad_edits():
    edits = EditableImageSet(torch.zeros(2, 3, 4, 4))
    with pytest.raises(SceneError, match="shape"):
        edits.replace(0, torch.zeros(3, 5, 4))
    with pytest.raises(SceneError, match="NaN"):
        edits.replace(0, torch.full((3, 4, 4), float("nan")))
    with pytest.raises(IndexError):
        edits.replace(2, torch.zeros(3, 4, 4))
    edits.replace(-1, torch.full((3, 4, 4), 2.0))  # clamped into [0, 1]
    assert edits.current(1).max().item() == 1.0
