"""PRSD shape branch (model/prsd.py, model/smpl.py): trained end to end (prior-loss gradients reach the encoder
and regressor), clips independent of batch-mates, SPIN/VIBE checkpoints mapped by key, smplx decoding on a small
synthetic SMPL file, 6D rotations, the chumpy-free SMPL converter, and the authors' defaults (the regressor
starts from the prior mean shape, dropouts 0.5 / 0.2)."""
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from configs import load_config
from model.prsd import PRSD, build_prsd, load_pretrained_regressor
from model.smpl import (
    FACE_KEYPOINT_NAMES,
    SMPLDecoder,
    default_mean_params,
    identity_rot6d,
    load_mean_params,
    load_smpl_arrays,
    read_smpl_pickle,
    rot6d_to_rotmat,
)
from tests.helpers.models import make_tiny_sas

PRIOR_MEAN = torch.tensor([0.2056, 0.3356, -0.3507, 0.3561, 0.4175, 0.0309, 0.3048, 0.2361, 0.2091, 0.3121])
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
SMALL = ["MODEL.PRSD.FEAT_DIM", "32", "MODEL.PRSD.HIDDEN_DIM", "32", "MODEL.PRSD.AGG_LAYERS", "1",
         "MODEL.PRSD.AGG_HEADS", "4", "MODEL.PRSD.AGG_FFN_DIM", "64"]


def small_cfg(*extra):
    return load_config(None, SMALL + list(extra))


def synthetic_smpl_arrays(num_vertices=40, seed=0):
    """A small SMPL-like body: random template, shape/pose bases, skinning weights and a joint
    regressor averaging a few vertices per joint; SMPL's kinematic tree; face keypoints on 5 vertices."""
    rng = np.random.default_rng(seed)
    regressor = np.zeros((24, num_vertices), np.float32)
    for joint in range(24):
        regressor[joint, rng.choice(num_vertices, 3, replace=False)] = 1.0 / 3
    weights = rng.random((num_vertices, 24)).astype(np.float32) ** 4
    parents = np.array(SMPL_PARENTS, dtype=np.int64)
    parents[0] = 4294967295  # the official files store the root's parent as uint32 -1
    return dict(
        v_template=rng.normal(size=(num_vertices, 3)).astype(np.float32),
        shapedirs=(0.05 * rng.normal(size=(num_vertices, 3, 10))).astype(np.float32),
        posedirs=(0.01 * rng.normal(size=(num_vertices, 3, 207))).astype(np.float32),
        J_regressor=regressor,
        weights=weights / weights.sum(1, keepdims=True),
        kintree_table=np.stack([parents, np.arange(24)]).astype(np.int64),
        f=rng.integers(0, num_vertices, size=(20, 3)).astype(np.int64),
        extra_vertex_ids=np.array([1, 2, 3, 4, 5], dtype=np.int64),
    )


@pytest.fixture(scope="module")
def smpl_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("smpl") / "small_smpl.npz"
    np.savez(path, **synthetic_smpl_arrays())
    return str(path)


def test_prior_loss_gradients_reach_encoder_and_regressor():
    torch.manual_seed(0)
    model = build_prsd(small_cfg(), in_dim=16).train()
    out = model(torch.randn(2, 4, 5, 16))
    assert out["betas"].shape == (2, 4, 10) and out["frame_hidden"].shape == (2, 4, 32)
    assert out["framewise_shape"].shape == (2, 4, 10) and out["videowise_shape"].shape == (2, 10)
    torch.nn.functional.mse_loss(out["betas"], PRIOR_MEAN.expand_as(out["betas"])).backward()
    for name in ("input_proj.weight", "encoder.gru.weight_ih_l0", "encoder.gru.weight_hh_l1", "encoder.linear.weight",
                 "regressor.fc1.weight", "regressor.fc2.weight", "regressor.decshape.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_detach_output_reproduces_the_authors_frozen_shape_model():
    model = build_prsd(small_cfg("MODEL.PRSD.DETACH_OUTPUT", "True"), in_dim=16)
    out = model(torch.randn(2, 4, 5, 16))
    assert not out["betas"].requires_grad and not out["frame_hidden"].requires_grad
    out["videowise_shape"].sum().backward()  # the aggregator still trains
    assert model.aggregator.videowise.weight.grad is not None and model.regressor.fc1.weight.grad is None


def test_clip_output_independent_of_batch_mates_and_deterministic():
    torch.manual_seed(0)
    model = build_prsd(small_cfg(), in_dim=16).eval()
    tokens = torch.randn(4, 6, 5, 16)
    with torch.no_grad():
        together = model(tokens)
        again = model(tokens)
        alone = [model(tokens[i:i + 1]) for i in range(4)]  # oracle: one clip at a time
    for key in ("betas", "framewise_shape", "videowise_shape", "frame_hidden"):
        torch.testing.assert_close(torch.cat([a[key] for a in alone]), together[key], rtol=1e-5, atol=1e-5)
        assert torch.equal(together[key], again[key])
    with torch.no_grad():  # a different batch-mate changes nothing for clip 0
        swapped = model(torch.cat([tokens[:1], torch.randn(3, 6, 5, 16)]))
    torch.testing.assert_close(swapped["videowise_shape"][0], together["videowise_shape"][0], rtol=1e-5, atol=1e-5)


def test_regressor_starts_from_mean_parameters(tmp_path):
    mean = dict(pose=np.random.default_rng(0).normal(size=144).astype(np.float32),
                shape=np.arange(10, dtype=np.float32), cam=np.array([0.8, 0.1, -0.1], np.float32))
    path = tmp_path / "smpl_mean_params.npz"
    np.savez(path, **mean)
    loaded = load_mean_params(str(path))
    model = build_prsd(small_cfg("MODEL.PRSD.SMPL_MEAN_PARAMS", str(path)), in_dim=16)
    torch.testing.assert_close(model.regressor.init_shape[0], loaded["shape"])
    torch.testing.assert_close(model.regressor.init_pose[0], torch.from_numpy(mean["pose"]))
    defaults = default_mean_params()
    assert torch.equal(defaults["pose"], identity_rot6d()) and defaults["cam"].tolist() == pytest.approx([0.9, 0, 0])
    with pytest.raises(FileNotFoundError, match="SMPL_MEAN_PARAMS"):
        load_mean_params(str(tmp_path / "absent.npz"))


def test_spin_checkpoint_keys_are_mapped(tmp_path):
    torch.manual_seed(0)
    model = build_prsd(small_cfg(), in_dim=16)
    hidden, feat = 32, 32
    spin_model = {
        "conv1.weight": torch.randn(64, 3, 7, 7), "layer1.0.bn1.running_mean": torch.randn(64),  # the ResNet
        "fc1.weight": torch.randn(hidden, feat + 157), "fc1.bias": torch.randn(hidden),
        "fc2.weight": torch.randn(hidden, hidden), "fc2.bias": torch.randn(hidden),
        "decpose.weight": torch.randn(144, hidden), "decpose.bias": torch.randn(144),
        "decshape.weight": torch.randn(10, hidden), "decshape.bias": torch.randn(10),
        "deccam.weight": torch.randn(3, hidden), "deccam.bias": torch.randn(3),
        "init_pose": torch.randn(1, 144), "init_shape": torch.randn(1, 10), "init_cam": torch.randn(1, 3),
    }
    path = tmp_path / "spin_model_checkpoint.pt"
    torch.save({"model": spin_model, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, path)
    report = load_pretrained_regressor(model, str(path))
    assert "regressor.fc1.weight" in report["matched"] and "regressor.init_shape" in report["matched"]
    assert len(report["matched"]) == 13 and not report["shape_mismatch"]
    assert set(report["unexpected"]) == {"conv1.weight", "layer1.0.bn1.running_mean"}
    assert any(k.startswith("encoder.gru") for k in report["missing"])
    assert torch.equal(model.regressor.fc1.weight, spin_model["fc1.weight"])
    assert torch.equal(model.regressor.init_cam, spin_model["init_cam"])


def test_vibe_checkpoint_keys_are_mapped_with_mismatch_report(tmp_path):
    torch.manual_seed(0)
    model = build_prsd(small_cfg(), in_dim=16)
    reference = model.state_dict()
    vibe = {k: torch.randn_like(v) for k, v in reference.items() if k.startswith(("encoder.", "regressor."))}
    vibe["regressor.fc2.weight"] = torch.randn(16, 16)  # wrong width: reported, not loaded
    vibe["regressor.smpl.shapedirs"] = torch.randn(5, 3, 10)
    path = tmp_path / "vibe_model_wo_3dpw.pth.tar"
    torch.save({"gen_state_dict": {f"module.{k}": v for k, v in vibe.items()}, "performance": 1.0}, path)
    before = model.regressor.fc2.weight.detach().clone()
    report = load_pretrained_regressor(model, str(path))
    assert [m.split(":")[0] for m in report["shape_mismatch"]] == ["regressor.fc2.weight"]
    assert report["unexpected"] == ["regressor.smpl.shapedirs"] and report["missing"] == []
    assert torch.equal(model.encoder.gru.weight_hh_l1, vibe["encoder.gru.weight_hh_l1"])
    assert torch.equal(model.regressor.fc2.weight, before)


def test_rot6d_to_rotmat_matches_gram_schmidt_loop():
    torch.manual_seed(0)
    codes = torch.randn(7, 6, dtype=torch.float64)
    rotations = rot6d_to_rotmat(codes)
    for code, rotation in zip(codes.numpy(), rotations.numpy()):  # oracle: textbook Gram-Schmidt
        a1, a2 = code.reshape(3, 2)[:, 0], code.reshape(3, 2)[:, 1]
        b1 = a1 / np.linalg.norm(a1)
        b2 = a2 - b1.dot(a2) * b1
        b2 /= np.linalg.norm(b2)
        np.testing.assert_allclose(rotation, np.stack([b1, b2, np.cross(b1, b2)], axis=1), atol=1e-10)
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-10)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
    torch.testing.assert_close(rot6d_to_rotmat(identity_rot6d().reshape(24, 6)), torch.eye(3).expand(24, 3, 3))


def test_smplx_decodes_a_small_synthetic_smpl(smpl_file):
    arrays = synthetic_smpl_arrays()
    decoder = SMPLDecoder(load_smpl_arrays(smpl_file), source=smpl_file)
    assert len(decoder.state_dict()) == 0  # the (licensed) SMPL arrays never go into checkpoints
    torch.manual_seed(0)
    betas = 0.5 * torch.randn(3, 10)
    rest = decoder(betas, torch.eye(3).expand(3, 24, 3, 3))
    assert rest.shape == (3, 24 + len(FACE_KEYPOINT_NAMES), 3)
    shaped = torch.from_numpy(arrays["v_template"]) + torch.einsum("vck,nk->nvc", torch.from_numpy(arrays["shapedirs"]), betas)
    expected_joints = torch.einsum("jv,nvc->njc", torch.from_numpy(arrays["J_regressor"]), shaped)
    torch.testing.assert_close(rest[:, :24], expected_joints, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rest[:, 24:], shaped[:, 1:6], rtol=1e-4, atol=1e-5)  # face keypoints = vertices 1..5
    posed = decoder(betas, rot6d_to_rotmat(torch.randn(3, 24, 6)))  # rigid chain: bone lengths kept
    torch.testing.assert_close(decoder.bone_lengths(posed), decoder.bone_lengths(rest), rtol=1e-4, atol=1e-5)
    assert decoder.bone_lengths(posed).sum(-1).allclose(torch.ones(3))


def test_prsd_with_smpl_joints_and_bone_lengths(smpl_file):
    cfg = small_cfg("MODEL.PRSD.SMPL_MODEL_PATH", smpl_file, "MODEL.PRSD.USE_BONE_LENGTHS", "True")
    model = build_prsd(cfg, in_dim=16)
    out = model(torch.randn(2, 3, 5, 16))
    assert out["joints"].shape == (2, 3, 29, 3) and out["bone_lengths"].shape == (2, 3, 23)
    assert model.aggregator.gru.input_size == 10 + 23
    assert not any(k.startswith("smpl.") for k in model.state_dict())
    out["videowise_shape"].sum().backward()
    assert model.regressor.decshape.weight.grad.abs().sum() > 0  # through SMPL joints -> bone lengths
    with pytest.raises(ValueError, match="SMPL_MODEL_PATH"):
        PRSD(16, 32, 32, agg_layers=1, agg_heads=4, agg_ffn_dim=64, use_bone_lengths=True)


def test_smpl_pickle_of_plain_arrays_and_missing_file(tmp_path):
    arrays = synthetic_smpl_arrays()
    path = tmp_path / "smpl_plain.pkl"
    with open(path, "wb") as handle:
        pickle.dump(arrays, handle, protocol=2)
    loaded = load_smpl_arrays(str(path))
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)
    with pytest.raises(FileNotFoundError, match="convert_smpl"):
        load_smpl_arrays(str(tmp_path / "absent.npz"))


class _Malicious:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_smpl_pickle_reader_refuses_code(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"v_template": _Malicious()}, handle, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global .*builtin.*\.print"):
        read_smpl_pickle(str(path))


@pytest.fixture
def fake_chumpy(monkeypatch):
    """Modules named like chumpy's so that pickle writes chumpy globals, as the official files have."""
    package, submodule = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()
            self._cache = {"r": None}
            self.label = None

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    submodule.Ch, package.ch = Ch, submodule
    monkeypatch.setitem(sys.modules, "chumpy", package)
    monkeypatch.setitem(sys.modules, "chumpy.ch", submodule)
    return Ch


def test_convert_chumpy_smpl_pickle(fake_chumpy, tmp_path, monkeypatch):
    import scipy.sparse

    from tools.convert_smpl import main

    arrays = synthetic_smpl_arrays()
    official = dict(arrays)
    for key in ("v_template", "shapedirs", "posedirs", "weights"):
        official[key] = fake_chumpy(arrays[key].astype(np.float64))
    official["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"].astype(np.float64))
    official["bs_style"] = "lbs"
    official["pose_training_info"] = {"n": 1}
    source = tmp_path / "basicModel_fake.pkl"
    with open(source, "wb") as handle:
        pickle.dump(official, handle, protocol=2)
    monkeypatch.delitem(sys.modules, "chumpy.ch")  # the converter must not need chumpy
    monkeypatch.delitem(sys.modules, "chumpy")
    target = tmp_path / "out" / "smpl.npz"
    assert main([str(source), str(target)]) == 0
    converted = load_smpl_arrays(str(target))
    for key in ("v_template", "shapedirs", "posedirs", "weights", "J_regressor"):
        np.testing.assert_allclose(converted[key], arrays[key], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(converted["kintree_table"], arrays["kintree_table"])
    assert str(converted["bs_style"]) == "lbs" and "pose_training_info" not in converted
    assert sorted(p.name for p in target.parent.iterdir()) == ["smpl.npz"]  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open: not mkstemp's 0600
    SMPLDecoder(converted, source=str(target))  # smplx accepts the result


def test_convert_smpl_reports_a_missing_or_wrong_file_in_one_line(tmp_path, capsys):
    from tools.convert_smpl import main

    missing = tmp_path / "basicModel_missing.pkl"
    assert main([str(missing), str(tmp_path / "smpl.npz")]) == 1
    assert capsys.readouterr().err.strip() == f"error: SMPL model file not found: {missing}"
    source = tmp_path / "model.pkl"
    source.write_bytes(b"")
    assert main([str(source), str(tmp_path / "smpl.txt")]) == 1
    assert "must be a .npz file" in capsys.readouterr().err
    for content in (b"", b"not a pickle at all", pickle.dumps({"v_template": 1})[:-5]):  # empty, junk, truncated
        source.write_bytes(content)
        assert main([str(source), str(tmp_path / "smpl.npz")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(source) in err and "Traceback" not in err


def spin_loop(regressor, features):
    """SPIN/HMR's iterative error feedback as written there: fc1 over the concatenated state, three
    decoders, one residual update each (the oracle of the fused forward)."""
    count = features.shape[0]
    pose = regressor.init_pose.expand(count, -1)
    betas = regressor.init_shape.expand(count, -1)
    cam = regressor.init_cam.expand(count, -1)
    for _ in range(regressor.iterations):
        hidden = regressor.fc2(regressor.fc1(torch.cat([features, pose, betas, cam], 1)))
        pose = pose + regressor.decpose(hidden)
        betas = betas + regressor.decshape(hidden)
        cam = cam + regressor.deccam(hidden)
    return dict(pose6d=pose, betas=betas, cam=cam, hidden=hidden)


def test_fused_regressor_equals_spin_loop_outputs_and_gradients():
    torch.manual_seed(0)
    regressor = build_prsd(small_cfg("MODEL.PRSD.REGRESSOR_DROPOUT", "0.0", "MODEL.PRSD.AGG_DROPOUT", "0.0"), in_dim=16).regressor.train()
    for decoder in (regressor.decpose, regressor.decshape, regressor.deccam):  # updates large enough to matter
        torch.nn.init.normal_(decoder.weight, std=0.2)
    features = torch.randn(12, regressor.fc1.in_features - 157, requires_grad=True)
    fused, reference = regressor(features), spin_loop(regressor, features)
    for name in reference:
        torch.testing.assert_close(fused[name], reference[name], rtol=1e-5, atol=1e-5)
    weights = {name: torch.randn_like(value) for name, value in reference.items()}

    def gradients(outputs):
        loss = sum((outputs[name] * weights[name]).sum() for name in weights)
        return torch.autograd.grad(loss, [features, *regressor.parameters()])

    for got, want in zip(gradients(fused), gradients(reference)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_fused_regressor_under_bf16_autocast_stays_close_to_spin_loop():
    """Under autocast the feature and parameter halves of fc1 round to bf16 separately (SPIN's single
    fc1 rounds once): the difference stays at bf16 rounding level; the parameters stay fp32."""
    torch.manual_seed(0)
    regressor = build_prsd(small_cfg("MODEL.PRSD.REGRESSOR_DROPOUT", "0.0", "MODEL.PRSD.AGG_DROPOUT", "0.0"), in_dim=16).regressor.train()
    features = torch.randn(12, regressor.fc1.in_features - 157)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = regressor(features.to(torch.bfloat16))
        reference = spin_loop(regressor, features.to(torch.bfloat16))
    for name in ("pose6d", "betas", "cam"):
        assert fused[name].dtype == torch.float32
        torch.testing.assert_close(fused[name], reference[name].float(), rtol=2e-2, atol=2e-2)


def test_regressor_starts_from_the_prior_mean_shape_without_a_mean_params_file():
    model = build_prsd(small_cfg(), in_dim=16).eval()
    torch.testing.assert_close(model.regressor.init_shape[0], PRIOR_MEAN)
    with torch.no_grad():  # with the updates switched off, every frame's betas are the starting betas
        model.regressor.decshape.weight.zero_()
        model.regressor.decshape.bias.zero_()
        betas = model(torch.randn(2, 3, 5, 16))["betas"]
    torch.testing.assert_close(betas, PRIOR_MEAN.expand(2, 3, 10))


def test_init_betas_zero_and_a_bad_value():
    model = build_prsd(small_cfg("MODEL.PRSD.INIT_BETAS", "zero"), in_dim=16)
    assert torch.equal(model.regressor.init_shape, torch.zeros(1, 10))
    with pytest.raises(ValueError, match="MODEL.PRSD.INIT_BETAS"):
        build_prsd(small_cfg("MODEL.PRSD.INIT_BETAS", "mean"), in_dim=16)


def test_prsd_dropouts_are_the_authors():
    cfg, model = make_tiny_sas()
    assert (cfg.MODEL.PRSD.REGRESSOR_DROPOUT, cfg.MODEL.PRSD.AGG_DROPOUT) == (0.5, 0.2)
    assert model.prsd.regressor.drop1.p == 0.5 and model.prsd.regressor.drop2.p == 0.5
    assert {layer.dropout.p for layer in model.prsd.aggregator.transformer.layers} == {0.2}
