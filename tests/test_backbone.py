"""CLIP backbone: named towers build, weight files of every supported format load (OpenAI TorchScript
archive in fp16, open_clip state dict, timm names, safetensors), the positional embedding is resized
like an independent implementation, SIE and freezing behave, and missing weights fail at once."""
import os
import socket
import time
import warnings

import pytest
import torch
from torch import nn

from configs import load_config
from model import backbone as backbone_module
from model.backbone import CLIPBackbone, build_backbone, patch_grid, resize_positional_embedding
from model.weights import PretrainedWeightsError, is_torchscript_archive, read_torchscript_state_dict

TINY_VISION = dict(image_size=64, layers=2, width=64, patch_size=16, head_width=32, output_tokens=True)


@pytest.fixture(scope="module")
def tiny_clip():
    """A random open_clip CLIP whose image tower has the tiny-vit-16 architecture (4x4 grid at 64 px)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    text = CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    return CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(**TINY_VISION), text_cfg=text, quick_gelu=True).eval()


class _ArchiveHolder(nn.Module):
    """Holds a CLIP's submodules and parameters under the OpenAI archive names (visual.*, transformer.*,
    token_embedding, ...) plus the int buffers OpenAI's archives carry; its forward only exists for tracing."""

    def __init__(self, clip):
        super().__init__()
        for name, child in clip.named_children():
            setattr(self, name, child)
        for name, param in clip.named_parameters(recurse=False):
            self.register_parameter(name, param)
        self.register_buffer("input_resolution", torch.tensor(64))
        self.register_buffer("context_length", torch.tensor(8))
        self.register_buffer("vocab_size", torch.tensor(64))

    def forward(self, x):
        return x * 2


@pytest.fixture(scope="module")
def openai_archive(tiny_clip, tmp_path_factory):
    """An fp16 TorchScript archive laid out like OpenAI's ViT-B-16.pt (traced, every tensor half)."""
    import copy

    holder = _ArchiveHolder(copy.deepcopy(tiny_clip)).half()
    path = str(tmp_path_factory.mktemp("openai") / "ViT-tiny.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of export; the archives are not
        torch.jit.trace(holder, torch.zeros(1)).save(path)
    return path


def _oracle_resize(positional, new_grid, interpolation="bilinear"):
    """Independent resize: timm's resampler (no antialias, as the backbone), in fp32; bilinear is the
    authors' choice and the default (MODEL.POS_EMBED_INTERP)."""
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(positional.float()[None], list(new_grid), num_prefix_tokens=1,
                                  interpolation=interpolation, antialias=False)[0]


def test_patch_grid_formula():
    assert patch_grid((256, 128), 16, 16) == (16, 8)
    assert patch_grid((252, 126), 14, 14) == (18, 9)
    assert patch_grid((256, 128), 16, 12) == (21, 10)  # (256-16)//12+1, (128-16)//12+1


def test_vit_b16_builds_and_runs_at_256x128():
    torch.manual_seed(0)
    model = CLIPBackbone("ViT-B-16", (256, 128), num_cameras=3).eval()
    assert (model.width, model.proj_dim, model.patch_size, model.grid_size) == (768, 512, 16, (16, 8))
    assert len(model.transformer.resblocks) == 12
    assert model.positional_embedding.shape == (1 + 16 * 8, 768)
    with torch.no_grad():
        tokens, projected = model(torch.randn(1, 3, 256, 128), torch.tensor([2]))
    assert tokens.shape == (1, 129, 768) and projected.shape == (1, 129, 512)
    assert torch.isfinite(projected).all()


def test_vit_l14_builds_at_252x126_shapes_only():
    with torch.device("meta"):  # shapes without allocating 1.2 GB of random weights
        model = CLIPBackbone("ViT-L-14", (252, 126), num_cameras=3)
        tokens, projected = model(torch.empty(2, 3, 252, 126), torch.zeros(2, dtype=torch.long))
    assert (model.width, model.proj_dim, model.patch_size, model.grid_size) == (1024, 768, 14, (18, 9))
    assert len(model.transformer.resblocks) == 24
    assert model.positional_embedding.shape == (1 + 18 * 9, 1024) and model.proj.shape == (1024, 768)
    assert tokens.shape == (2, 163, 1024) and projected.shape == (2, 163, 768)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_reader_matches_jit_state_dict(openai_archive):
    assert is_torchscript_archive(openai_archive)
    ours = read_torchscript_state_dict(openai_archive)
    reference = torch.jit.load(openai_archive, map_location="cpu").state_dict()  # test-only oracle (runs the archive)
    assert set(ours) == set(reference)
    for key, value in reference.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
    assert ours["visual.conv1.weight"].dtype == torch.float16


def test_openai_fp16_archive_loads_at_256x128(openai_archive, tiny_clip):
    model = CLIPBackbone("tiny-vit-16", (256, 128), pretrain_path=openai_archive, num_cameras=2)
    source = {k: v.half().float() for k, v in tiny_clip.visual.state_dict().items()}  # what fp16 storage keeps
    assert model.loaded_from == openai_archive
    assert model.grid_size == (16, 8)
    assert model.positional_embedding.dtype == torch.float32
    torch.testing.assert_close(model.conv1.weight, source["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.proj, source["proj"], rtol=0, atol=0)
    torch.testing.assert_close(model.transformer.resblocks[1].attn.in_proj_weight,
                               source["transformer.resblocks.1.attn.in_proj_weight"], rtol=0, atol=0)
    expected = _oracle_resize(source["positional_embedding"], (16, 8))
    torch.testing.assert_close(model.positional_embedding.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.positional_embedding[0], source["positional_embedding"][0], rtol=0, atol=0)
    tokens, projected = model(torch.randn(2, 3, 256, 128), torch.tensor([0, 1]))
    assert tokens.shape == (2, 129, 64) and projected.shape == (2, 129, 32)


def test_open_clip_state_dict_matches_open_clip_forward(tiny_clip, tmp_path):
    path = str(tmp_path / "open_clip_tiny.pt")
    torch.save(tiny_clip.state_dict(), path)
    model = CLIPBackbone("tiny-vit-16", (64, 64), pretrain_path=path).eval()  # native square size, no SIE
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        tokens, projected = model(images, None)
        pooled, reference_tokens = tiny_clip.visual(images)
    torch.testing.assert_close(tokens[:, 1:], reference_tokens, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(projected[:, 0], pooled, rtol=1e-4, atol=1e-5)


def test_open_clip_state_dict_loads_at_256x128(tiny_clip, tmp_path):
    path = str(tmp_path / "open_clip_tiny.bin")
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_clip.state_dict().items()}}, path)
    model = CLIPBackbone("tiny-vit-16", (256, 128), pretrain_path=path, num_cameras=2)
    expected = _oracle_resize(tiny_clip.visual.positional_embedding.detach(), (16, 8))
    torch.testing.assert_close(model.positional_embedding.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.ln_post.weight, tiny_clip.visual.ln_post.weight, rtol=0, atol=0)


def test_timm_names_and_safetensors_load(tiny_clip, tmp_path):
    from safetensors.torch import save_file
    from timm.models.vision_transformer import _convert_openai_clip

    timm_state = _convert_openai_clip(tiny_clip.state_dict(), None)  # timm's own open_clip -> timm renaming
    path = str(tmp_path / "timm_tiny.safetensors")
    save_file({k: v.contiguous() for k, v in timm_state.items()}, path)
    model = CLIPBackbone("tiny-vit-16", (64, 64), pretrain_path=path)
    reference = tiny_clip.visual.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0, msg=key)


def test_resize_keeps_class_position_and_identity():
    positional = torch.randn(1 + 14 * 14, 8, dtype=torch.float16)
    resized = resize_positional_embedding(positional, (16, 8))
    assert resized.shape == (129, 8) and resized.dtype == torch.float32
    assert torch.equal(resized[0], positional[0].float())
    torch.testing.assert_close(resized, _oracle_resize(positional, (16, 8)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(resize_positional_embedding(positional, (14, 14)), positional.float())
    bicubic = resize_positional_embedding(positional, (16, 8), mode="bicubic")
    torch.testing.assert_close(bicubic, _oracle_resize(positional, (16, 8), "bicubic"), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(bicubic, resized, atol=1e-3)


def test_pos_embed_interp_key_reaches_the_backbone():
    from configs import get_defaults

    cfg = get_defaults()
    assert cfg.MODEL.POS_EMBED_INTERP == "bilinear"
    cfg.merge_from_list(["MODEL.BACKBONE", "tiny-vit-16", "MODEL.POS_EMBED_INTERP", "bicubic"])
    assert build_backbone(cfg, num_cameras=3).pos_embed_interp == "bicubic"


def test_stride_sie_and_freezing():
    torch.manual_seed(0)
    model = CLIPBackbone("tiny-vit-16", (64, 32), stride=12, num_cameras=3, num_views=2, sie_coe=1.0)
    assert model.grid_size == (5, 2) and model.conv1.stride == (12, 12)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_pre.bias"}
    assert 0.0 < model.sie_camera.std().item() < 0.04 and model.sie_camera.abs().max().item() <= 0.04 + 1e-6
    images = torch.randn(1, 3, 64, 32).expand(3, -1, -1, -1)
    tokens, projected = model(images, torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]))
    assert tokens.shape == (3, 11, 64)
    assert not torch.allclose(tokens[0], tokens[1]) and not torch.allclose(tokens[1], tokens[2])
    projected[:, 0].sum().backward()
    assert model.sie_camera.grad[:2].abs().sum() > 0 and model.sie_camera.grad[2].abs().sum() == 0
    assert model.conv1.weight.grad is None and model.transformer.resblocks[0].attn.in_proj_weight.grad is not None
    unfrozen = CLIPBackbone("tiny-vit-16", (64, 32), freeze_patch_embed=False)
    assert all(p.requires_grad for p in unfrozen.parameters())
    with pytest.raises(ValueError, match="camids"):
        model(images, None)


def test_other_test_size_interpolates_positions():
    model = CLIPBackbone("tiny-vit-16", (64, 32)).eval()
    with torch.no_grad():
        tokens, _ = model(torch.randn(2, 3, 96, 48))
    assert tokens.shape == (2, 1 + 6 * 3, 64)


def test_build_backbone_reads_config():
    cfg = load_config(None, ["MODEL.BACKBONE", "tiny-vit-16", "INPUT.SIZE_TRAIN", "[64, 32]", "MODEL.SIE_VIEW", "True",
                             "MODEL.STRIDE_SIZE", "8", "MODEL.SIE_COE", "2.0", "MODEL.QUICK_GELU", "False",
                             "MODEL.PRETRAIN_PATH", ""])
    model = build_backbone(cfg, num_cameras=3, num_views=2)
    assert model.grid_size == (7, 3) and model.sie_camera.shape == (3, 64) and model.sie_view.shape == (2, 64)
    assert model.sie_coe == 2.0 and isinstance(model.transformer.resblocks[0].mlp.gelu, nn.GELU)


def _forbid_network_and_building(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the weight check touched the network")

    def no_building(*args, **kwargs):
        raise AssertionError("the tower was built before the weight file was checked")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(backbone_module, "vision_config", no_building)


def test_missing_weight_file_fails_at_once_with_guidance(monkeypatch, tmp_path):
    _forbid_network_and_building(monkeypatch)
    missing = str(tmp_path / "pretrained" / "ViT-B-16.pt")
    started = time.perf_counter()
    with pytest.raises(PretrainedWeightsError) as caught:
        CLIPBackbone("ViT-B-16", (256, 128), pretrain_path=missing)
    elapsed = time.perf_counter() - started  # reported, not asserted (no timing assertions in tests)
    message = str(caught.value)
    assert "MODEL.PRETRAIN_PATH" in message and missing in message
    assert "ViT-B-16.pt" in message and "openaipublic" in message and "put it at" in message
    print(f"missing weight file reported after {elapsed * 1000:.1f} ms")


def test_pretrain_tag_offline_fails_at_once(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/clip copy
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    _forbid_network_and_building(monkeypatch)
    with pytest.raises(PretrainedWeightsError, match="offline.*ViT-L-14.pt"):
        CLIPBackbone("ViT-L-14", (252, 126), pretrain_tag="openai")


def test_bad_weight_files_name_the_problem(tiny_clip, tmp_path):
    wrong = str(tmp_path / "not_clip.pt")
    torch.save({"weight": torch.zeros(2)}, wrong)
    with pytest.raises(ValueError, match="not_clip.pt.*CLIP ViT"):
        CLIPBackbone("tiny-vit-16", (64, 32), pretrain_path=wrong)
    other_arch = str(tmp_path / "tiny.pt")
    torch.save(tiny_clip.state_dict(), other_arch)
    with pytest.raises(ValueError, match="does not fit backbone tiny-vit-8"):
        CLIPBackbone("tiny-vit-8", (64, 32), pretrain_path=other_arch)
    with pytest.raises(ValueError, match="hub model names"):
        CLIPBackbone("hf-hub:someone/model", (64, 32))
    assert not os.path.exists(str(tmp_path / "pretrained"))


def test_runs_under_autocast():
    model = CLIPBackbone("tiny-vit-16", (64, 32), num_cameras=2, num_views=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens, projected = model(torch.randn(2, 3, 64, 32), torch.tensor([0, 1]), torch.tensor([1, 0]))
    assert tokens.dtype == projected.dtype == torch.bfloat16 and torch.isfinite(projected.float()).all()
    projected.float().sum().backward()
    assert model.sie_camera.grad is not None and model.sie_camera.grad.dtype == torch.float32
