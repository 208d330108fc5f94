"""Synthetic XFD generator, version 2's nuisances: camera colour response, identity-specific gait,
frame quality that comes and goes, and the clothes-change (outfit) report; plus the version-1 option."""
import json
import math
import os

import cv2
import numpy as np
import pytest

from datasets import synthetic
from datasets.synthetic import (SyntheticConfig, camera_response, generate_dataset, load_tracklet_outfits, make_identity,
                                plan_frame_quality, plan_identity_tracklets, tracklet_camera_response, tracklet_gait)

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


# ----------------------------------------------------------------------------- 1. camera colour response
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


# ----------------------------------------------------------------------------- 2. identity-specific gait
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


# ----------------------------------------------------------------------------- 3. frame quality
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


def _detail(image):
    return float(np.abs(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F)).mean())


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


# ----------------------------------------------------------------------------- 4. clothes changes reported
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
