"""Synthetic XFD generator: layout, names, determinism, guarantees, degradation with distance, atomicity."""
import dataclasses
import filecmp
import json
import math
import os

import cv2
import numpy as np
import pytest

from datasets import synthetic
from datasets.detreidx.dataset import DetReIDX
from datasets.detreidx.names import CAPTURE_POINTS, parse_frame_name
from datasets.synthetic import SyntheticConfig, generate_dataset, make_identity
from tests.datasets_fixtures import TINY, make_tiny_root
from utils.protocol import CASE_FOLDERS


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_tiny_root(tmp_path_factory.mktemp("synthetic"))


def _tree(root):
    files = []
    for folder, _, names in os.walk(root):
        files += [os.path.relpath(os.path.join(folder, n), root) for n in names]
    return sorted(files)


def test_cli_same_seed_same_bytes(tmp_path, capsys):
    args = ["--ids", "2", "--test-ids", "1", "--max-frames", "6", "--ground-size", "40", "--aerial-size", "32"]
    assert synthetic.main(["--root", str(tmp_path / "A"), "--seed", "5", *args]) == 0
    assert synthetic.main(["--root", str(tmp_path / "B"), "--seed", "5", *args]) == 0
    assert "Wrote" in capsys.readouterr().out
    tree_a, tree_b = _tree(tmp_path / "A"), _tree(tmp_path / "B")
    assert tree_a == tree_b and len(tree_a) > 20
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "A", tmp_path / "B", tree_a, shallow=False)
    assert mismatch == [] and errors == []
    assert synthetic.main(["--root", str(tmp_path / "C"), "--seed", "6", *args]) == 0
    first = tree_a[-1]
    assert _tree(tmp_path / "C") != tree_a or open(tmp_path / "A" / first, "rb").read() != open(tmp_path / "C" / first, "rb").read()


def test_layout_names_and_pid_folders(tiny_root):
    assert sorted(os.listdir(tiny_root)) == sorted(["train", *CASE_FOLDERS.values(), synthetic.INFO_FILE])
    pids = sorted(os.listdir(os.path.join(tiny_root, "train")))
    assert pids == [f"{p:04d}" for p in range(1, 7)]
    test_pids = sorted(os.listdir(os.path.join(tiny_root, CASE_FOLDERS[1], "query")))
    assert test_pids == [f"{p:04d}" for p in range(7, 10)]
    info = json.load(open(os.path.join(tiny_root, synthetic.INFO_FILE)))
    assert info["config"] == dataclasses.asdict(TINY)
    for pid in pids:
        for tracklet in os.listdir(os.path.join(tiny_root, "train", pid)):
            assert tracklet.split("_")[0] == pid and tracklet.split("_")[1].isdigit()
            frames = sorted(os.listdir(os.path.join(tiny_root, "train", pid, tracklet)))
            parsed = [parse_frame_name(f) for f in frames]
            assert len({(p.view, p.session, p.height, p.distance, p.angle) for p in parsed}) == 1
            assert all(p.pid_token == pid for p in parsed)
            tokens = frames[0][:-4].split("_")
            if parsed[0].view == "aerial":
                # The authors' form: the bare session integer just before the frame number.
                assert len(tokens) == 24 and tokens[-2] in ("1", "2") and parsed[0].session == f"S{tokens[-2]}"
                assert (parsed[0].height, parsed[0].distance, parsed[0].angle) in CAPTURE_POINTS
            else:
                assert len(tokens) < 8      # short ground names: the authors' loader calls them ground


def test_tracklet_ids_unique_and_short_tracklets_exist(tiny_root):
    ds = DetReIDX(tiny_root)
    names = {t.name for t in ds.train} | {t.name for s in ds.cases.values() for t in s.query + s.gallery}
    ids = [n.split("_")[1] for n in names]
    assert len(ids) == len(set(ids)), "tracklet ids must be unique over the whole dataset"
    lengths = [t.num_frames for t in ds.train]
    assert min(lengths) < 8 and max(lengths) <= TINY.max_frames and min(lengths) >= TINY.min_frames
    assert not {t.pid for t in ds.train} & {t.pid for s in ds.cases.values() for t in s.query}


def test_every_query_has_a_true_match(tiny_root):
    ds = DetReIDX(tiny_root)
    for split in ds.cases.values():
        for q in split.query:
            assert any(g.pid == q.pid and g.name != q.name for g in split.gallery)
            assert any(g.pid == q.pid and g.camid != q.camid for g in split.gallery)
        assert not {t.name for t in split.query} & {t.name for t in split.gallery}


def test_identity_build_fixed_and_clothes_change_share():
    a = make_identity(3, seed=0, clothes_change=0.0)
    b = make_identity(3, seed=0, clothes_change=1.0)
    assert a.build == b.build and a.skin == b.skin
    assert not a.changes_clothes and b.changes_clothes
    changed = sum(make_identity(p, 0, 0.3).changes_clothes for p in range(200))
    assert 30 <= changed <= 90


def _detail(image):
    return float(np.abs(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F)).mean())


def test_detail_vanishes_with_aerial_distance():
    identity = make_identity(1, seed=0, clothes_change=0.0)
    outfit = identity.outfits["S1"]
    assert synthetic.apparent_px_per_metre(11.6) > 40 > 10 > synthetic.apparent_px_per_metre(134)

    def render(point, seed):
        h, d, a = point
        view = synthetic.View(True, a, 180.0, synthetic.apparent_px_per_metre(math.hypot(h, d)), noise_sigma=0.0,
                              blur_sigma=0.0, light=(1.0, 1.0, 1.0), session="S1")
        rng = np.random.default_rng(seed)
        background = np.full((200, 200, 3), 128, np.float32)
        return synthetic.render_frame(identity, outfit, view, 0.3, 96, rng, background, (0, 0))

    near = np.mean([_detail(render((5.8, 10, 30), s)) for s in range(3)])
    far = np.mean([_detail(render((60, 120, 30), s)) for s in range(3)])
    assert near > 2 * far


def test_pitch_foreshortens_the_figure():
    identity = make_identity(2, seed=0, clothes_change=0.0)
    outfit = identity.outfits["S1"]

    def extent(pitch):
        view = synthetic.View(True, pitch, 180.0, None, 0.0, 0.0, (1.0, 1.0, 1.0), "S1")
        u0, u1, v0, v1 = synthetic.pose_figure(identity, outfit, view, 0.0).bounds()
        return v1 - v0

    heights = [extent(p) for p in (0, 30, 60, 90)]
    assert heights == sorted(heights, reverse=True)
    assert heights[-1] < 0.45 * heights[0]   # nadir: mostly head and shoulders


def test_refuses_non_empty_root_and_leaves_no_half_dataset(tmp_path, monkeypatch):
    root = tmp_path / "out"
    root.mkdir()
    (root / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate_dataset(str(root), TINY)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "render_tracklet", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(str(tmp_path / "fresh"), TINY)
    assert os.listdir(tmp_path) == ["out"]


def test_invalid_settings_are_rejected(tmp_path, capsys):
    assert synthetic.main(["--root", str(tmp_path / "x"), "--ground-tracklets", "0"]) == 2
    assert "--ground-tracklets" in capsys.readouterr().out
    with pytest.raises(ValueError, match="min-frames"):
        SyntheticConfig(min_frames=9, max_frames=4).validate()
