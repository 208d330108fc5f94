"""The synthetic XFD generator (datasets/synthetic.py, ``python -m datasets.synthetic``): layout, names,
determinism, guarantees, degradation with distance, atomicity; version 2's nuisances: camera colour response,
identity-specific gait, frame quality that comes and goes, and the clothes-change (outfit) report; plus the
version-1 option."""
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
from datasets.synthetic import (
    SyntheticConfig,
    camera_response,
    generate_dataset,
    load_tracklet_outfits,
    make_identity,
    plan_frame_quality,
    plan_identity_tracklets,
    tracklet_camera_response,
    tracklet_gait,
)
from tests.helpers.data import TINY_DATA
from utils.protocol import CASE_FOLDERS


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
    assert info["config"] == dataclasses.asdict(TINY_DATA)
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
    assert min(lengths) < 8 and max(lengths) <= TINY_DATA.max_frames and min(lengths) >= TINY_DATA.min_frames
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
        generate_dataset(str(root), TINY_DATA)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "render_tracklet", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(str(tmp_path / "fresh"), TINY_DATA)
    assert os.listdir(tmp_path) == ["out"]


def test_invalid_settings_are_rejected(tmp_path, capsys):
    assert synthetic.main(["--root", str(tmp_path / "x"), "--ground-tracklets", "0"]) == 2
    assert "--ground-tracklets" in capsys.readouterr().out
    with pytest.raises(ValueError, match="min-frames"):
        SyntheticConfig(min_frames=9, max_frames=4).validate()


# ----------------------------------------------------------------------------- version 2: the nuisances
SMALL = dict(ground_size=40, aerial_size=32, min_frames=3, max_frames=10)


def _render(identity, camera=None, degradation=None, gait=synthetic.CLASSIC_GAIT, noise=0.0, size=96, yaw=200.0, phase=0.8):
    """One ground-style crop of ``identity`` (S1 outfit) with a fixed pose, geometry and noise stream."""
    view = synthetic.View(False, 10.0, yaw, None, noise, 0.0, (1.0, 1.0, 1.0), "S1", camera=camera)
    background = synthetic.make_background(np.random.default_rng(1), 2 * size, 2 * size, False)
    return synthetic.render_frame(identity, identity.outfits["S1"], view, phase, size, np.random.default_rng(0), background,
                                  (size, size), gait=gait, degradation=degradation)


def _hsv(rgb):
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)   # hue in degrees


def _mean_hue_shift(a, b, mask):
    """Circular mean over ``mask`` of the per-pixel hue difference a - b, in degrees."""
    d = np.radians(_hsv(a)[..., 0] - _hsv(b)[..., 0])[mask]
    return math.degrees(math.atan2(np.sin(d).mean(), np.cos(d).mean()))


def _plans(config, pids):
    """pid -> (identity, plans), numbered as the generator numbers them."""
    out, next_tid = {}, 1
    for pid in pids:
        identity = make_identity(pid, config.seed, config.clothes_change)
        out[pid] = (identity, plan_identity_tracklets(identity, config, next_tid))
        next_tid += len(out[pid][1])
    return out


# ----------------------------------------------------------------------------- camera colour response
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_cameras_render_the_same_clothes_with_another_hue(seed):
    config = SyntheticConfig(seed=seed)
    cameras = [camera_response(config, camid) for camid in range(synthetic.NUM_CAMERAS)]
    assert all(abs(c.hue_deg) <= 20.0 for c in cameras)   # colour still identifies within bounds
    for pid in (2, 5):
        identity = make_identity(pid, seed, 0.0)
        reference = _render(identity)
        hsv = _hsv(reference)
        clothes = (hsv[..., 1] > 0.3) & (hsv[..., 2] > 0.15)   # chromatic pixels (the background is nearly grey)
        assert clothes.mean() > 0.1
        crops = [_render(identity, camera) for camera in cameras]
        for a in range(len(crops)):
            for b in range(a + 1, len(crops)):
                assert abs(_mean_hue_shift(crops[a], crops[b], clothes)) >= 8.0, (pid, a, b)


def test_camera_response_is_consistent_within_one_camera():
    """Every tracklet of a camera renders colour (nearly) alike, whoever is in it; cameras differ more."""
    config = SyntheticConfig(seed=3)
    plans = [p for _, ps in _plans(config, range(1, 7)).values() for p in ps]
    hues = {}
    for plan in plans:
        response = tracklet_camera_response(plan, config)
        base = camera_response(config, plan.camid)
        assert response.saturation == base.saturation and response.gamma == base.gamma
        hues.setdefault(plan.camid, []).append(response.hue_deg)
    assert sorted(hues) == [0, 1, 2]
    for camid, values in hues.items():
        assert max(values) - min(values) <= 4.0
    centres = sorted(np.mean(v) for v in hues.values())
    assert min(np.diff(centres)) >= 10.0


# ----------------------------------------------------------------------------- identity-specific gait
def test_gait_is_drawn_per_identity_with_small_per_tracklet_variation():
    config = SyntheticConfig(seed=0, aerial_tracklets=3)
    cadences, swings, arms = {}, {}, {}
    for pid, (identity, plans) in _plans(config, range(1, 16)).items():
        gaits = [tracklet_gait(identity, plan, config) for plan in plans]
        cadences[pid] = [g.stride_frames for g in gaits]
        swings[pid] = [g.leg_swing_deg for g in gaits]
        arms[pid] = [g.arm_ratio for g in gaits]
        # A biometric: the same gait whether or not the identity changes clothes.
        assert make_identity(pid, 0, 1.0).gait == make_identity(pid, 0, 0.0).gait == identity.gait
    for values in (cadences, swings, arms):
        within = np.mean([np.std(v) for v in values.values()])
        between = np.std([np.mean(v) for v in values.values()])
        assert between > 5.0 * within
        for v in values.values():
            assert max(v) / min(v) <= 1.16
    # Two identities whose cadences never overlap, though every tracklet varies a little.
    slow, fast = max(cadences.values(), key=np.mean), min(cadences.values(), key=np.mean)
    assert min(slow) > max(fast) + 2.0


def test_the_figure_walks_with_its_gait():
    identity = make_identity(2, seed=0, clothes_change=0.0)
    view = synthetic.View(False, 5.0, 90.0, None, 0.0, 0.0, (1.0, 1.0, 1.0), "S1")   # seen from the side

    def stance_width(gait):
        u0, u1, _, _ = synthetic.pose_figure(identity, identity.outfits["S1"], view, math.pi / 2, gait).bounds()
        return u1 - u0

    narrow = synthetic.Gait(11.0, 18.0, 0.3, 0.01, 0.6)
    wide = synthetic.Gait(11.0, 36.0, 1.2, 0.01, 0.6)
    assert stance_width(wide) > 1.15 * stance_width(narrow)


# ----------------------------------------------------------------------------- frame quality
def test_tracklets_mix_clean_and_degraded_frames():
    config = SyntheticConfig(seed=0, min_frames=8, max_frames=24)
    qualities = [plan_frame_quality(p, config) for _, ps in _plans(config, range(1, 21)).values() for p in ps]
    frames = [d for q in qualities for d in q]
    share = sum(d is not None for d in frames) / len(frames)
    assert 0.1 <= share <= 0.4, share                                     # most frames stay clean
    assert all(q[0] is None for q in qualities)                           # a tracker starts on a clean detection
    mixed = [q for q in qualities if any(d is None for d in q) and any(d is not None for d in q)]
    assert len(mixed) >= 0.5 * len(qualities)
    # Degradations come and go: clean -> degraded -> clean within one tracklet.
    assert any(any(q[i] is None and q[i + 1] is not None for i in range(len(q) - 1)) and
               any(q[i] is not None and q[i + 1] is None for i in range(len(q) - 1)) for q in qualities)
    assert {d.kind for d in frames if d is not None} == set(synthetic.DEGRADATION_KINDS)
    assert {d.shape for d in frames if d is not None and d.kind == "occlusion"} == set(synthetic.OCCLUDERS)


def test_degradations_spoil_the_rendered_frame():
    identity = make_identity(3, seed=0, clothes_change=0.0)
    D = synthetic.FrameDegradation
    clean = _render(identity, noise=2.0)
    # Occlusion: a pole covers its columns with its own colour; the rest of the crop is unchanged.
    pole = _render(identity, degradation=D("occlusion", "pole", 0.5, 0.2, 0.0, (80.0, 80.0, 80.0)), noise=2.0)
    centre = clean.shape[1] // 2
    assert np.abs(pole[:, centre].astype(int) - 80).max() <= 12 and np.abs(clean[:, centre].astype(int) - 80).max() > 40
    assert np.array_equal(pole[:, :2], clean[:, :2])
    barrier = _render(identity, degradation=D("occlusion", "barrier", 0.5, 0.4, 0.0, (150.0, 40.0, 40.0)), noise=2.0)
    assert np.abs(barrier[-5:].astype(int) - (150, 40, 40)).max() <= 12 and np.array_equal(barrier[:10], clean[:10])
    walker = _render(identity, degradation=D("occlusion", "pedestrian", 0.5, 0.4, 0.0, (30.0, 60.0, 170.0)), noise=2.0)
    assert (np.abs(walker.astype(int) - (30, 60, 170)).max(axis=2) <= 12).mean() > 0.1
    # Motion blur: much less detail.
    blurred = _render(identity, degradation=D("motion_blur", "", 0.5, 0.1, 30.0), noise=2.0)
    assert blurred.shape == clean.shape and _detail(blurred) < 0.6 * _detail(clean)
    # Truncation: the box misses part of the person; what is left is the clean crop's window, same scale.
    for side, window in (("bottom", lambda c, r, k: c[:-r]), ("top", lambda c, r, k: c[r:]),
                         ("left", lambda c, r, k: c[:, k:]), ("right", lambda c, r, k: c[:, :-k])):
        cut = _render(identity, degradation=D("truncation", side, 0.5, 0.3), noise=2.0)
        rows, cols = round(0.3 * clean.shape[0]), round(0.3 * clean.shape[1])
        assert np.array_equal(cut, window(clean, rows, cols)), side


def test_render_tracklet_applies_every_nuisance(monkeypatch):
    """The generator renders with the planned camera, gait and frame quality (version 1's values change the bytes)."""
    config = SyntheticConfig(seed=0, **{**SMALL, "min_frames": 16, "max_frames": 16})
    identity, plans = _plans(config, [1])[1]
    plan = plans[-1]
    quality = plan_frame_quality(plan, config)
    assert any(quality) and not all(quality)
    frames = synthetic.render_tracklet(identity, plan, config)

    monkeypatch.setattr(synthetic, "plan_frame_quality", lambda plan, config: (None,) * plan.num_frames)
    clean = synthetic.render_tracklet(identity, plan, config)
    for (_, a), (_, b), degradation in zip(frames, clean, quality):
        assert (a == b) == (degradation is None)   # degradations touch their frames only
    monkeypatch.setattr(synthetic, "tracklet_camera_response", lambda plan, config: None)
    no_camera = synthetic.render_tracklet(identity, plan, config)
    assert all(a != b for (_, a), (_, b) in zip(clean, no_camera))
    monkeypatch.setattr(synthetic, "tracklet_gait", lambda identity, plan, config: None)
    classic = synthetic.render_tracklet(identity, plan, config)
    assert sum(a != b for (_, a), (_, b) in zip(no_camera, classic)) >= len(classic) - 2


# ----------------------------------------------------------------------------- clothes changes reported
def test_outfit_mapping_marks_the_clothes_changes(tmp_path):
    config = SyntheticConfig(num_ids=6, num_test_ids=4, seed=2, clothes_change=0.5, **SMALL)
    root = str(tmp_path / "xfd")
    generate_dataset(root, config)
    outfits = load_tracklet_outfits(root)
    info = json.load(open(os.path.join(root, synthetic.INFO_FILE)))
    assert info["generator_version"] == synthetic.GENERATOR_VERSION == 2
    on_disk = {os.path.basename(folder) for folder, dirs, files in os.walk(root) if files and not dirs}
    assert set(outfits) == on_disk

    shown = {False: 0, True: 0}
    for pid, (identity, plans) in _plans(config, range(1, 11)).items():
        keys = {plan.name: outfits[plan.name] for plan in plans}
        aerial = {s: {keys[p.name] for p in plans if p.session == s} for s in ("S1", "S2")}
        assert aerial["S1"] == {f"{pid:04d}/S1"}
        if identity.changes_clothes:
            assert aerial["S2"] == {f"{pid:04d}/S2"}       # S1 and S2 are different outfits
        else:
            assert aerial["S2"] == aerial["S1"]            # one outfit in both sessions
        for plan in plans:
            if not plan.aerial:   # a ground tracklet gets the outfit it shows
                assert keys[plan.name] == next(iter(aerial[plan.outfit_session]))
                shown[identity.changes_clothes and plan.outfit_session == "S2"] += 1
    assert shown[True] and shown[False]   # the setting covers ground tracklets of both outfits of a changer


def test_load_tracklet_outfits_without_a_mapping(tmp_path):
    assert load_tracklet_outfits(str(tmp_path)) is None
    with open(tmp_path / synthetic.INFO_FILE, "w") as f:
        json.dump({"generator": "datasets.synthetic", "config": {}}, f)   # written before the mapping existed
    assert load_tracklet_outfits(str(tmp_path)) is None


# ----------------------------------------------------------------------------- version 1 and determinism
def test_no_nuisances_generates_version_1(tmp_path):
    assert synthetic.main(["--root", str(tmp_path / "v1"), "--no-nuisances", "--ids", "2", "--test-ids", "1",
                           "--max-frames", "6", "--ground-size", "40", "--aerial-size", "32"]) == 0
    info = json.load(open(tmp_path / "v1" / synthetic.INFO_FILE))
    assert info["generator_version"] == 1 and info["config"]["nuisances"] is False
    assert info["degraded_frames"] == 0 and load_tracklet_outfits(str(tmp_path / "v1"))   # still reported
    config = SyntheticConfig(nuisances=False)
    identity, plans = _plans(config, [1])[1]
    assert camera_response(config, 0) is None
    assert all(tracklet_gait(identity, p, config) is None and tracklet_camera_response(p, config) is None and
               not any(plan_frame_quality(p, config)) for p in plans)


def test_an_identity_looks_the_same_however_many_are_generated(tmp_path):
    for n in (2, 3):
        generate_dataset(str(tmp_path / str(n)), SyntheticConfig(num_ids=n, num_test_ids=0, **SMALL))
    for pid in ("0001", "0002"):
        a, b = tmp_path / "2" / "train" / pid, tmp_path / "3" / "train" / pid
        files = sorted(os.path.relpath(os.path.join(d, f), a) for d, _, fs in os.walk(a) for f in fs)
        assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
