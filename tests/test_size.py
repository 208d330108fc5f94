"""Size report: parameter counts match the built model, backbone FLOPs match the ViT formula,
the paper configs report without any weight file, and the CLI prints the table."""
import pytest

from configs import load_config
from model.build import build_model
from model.size import main, model_size_report, size_config

TINY = ["MODEL.BACKBONE", "tiny-vit-16", "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]",
        "TEST.SEQ_LEN", "4", "DATALOADER.SEQ_LEN", "4", "MODEL.MGTM.SPATIAL_TOKENS", "4", "MODEL.MGTM.HEADS", "4",
        "MODEL.PRSD.FEAT_DIM", "32", "MODEL.PRSD.HIDDEN_DIM", "32", "MODEL.PRSD.AGG_LAYERS", "1",
        "MODEL.PRSD.AGG_HEADS", "4", "MODEL.PRSD.AGG_FFN_DIM", "64",
        "MODEL.PRETRAIN_PATH", "pretrained/does-not-exist.pt"]  # cleared by the report: sizes need no weights


def vit_flops(frames, height, width, patch, dim, layers, proj, mlp_ratio=4):
    """Oracle: FLOPs (2 per multiply-add) of a plain ViT tower over ``frames`` images, projecting all tokens."""
    patches = (height // patch) * (width // patch)
    tokens = patches + 1
    embed = 2 * patches * dim * 3 * patch * patch
    per_layer = (2 * tokens * dim * 3 * dim  # qkv
                 + 2 * 2 * tokens * tokens * dim  # q k^T and attention x v
                 + 2 * tokens * dim * dim  # output projection
                 + 2 * 2 * tokens * dim * mlp_ratio * dim)  # MLP
    return frames * (embed + layers * per_layer + 2 * tokens * dim * proj)


def test_tiny_report_counts_parameters_and_flops():
    cfg = load_config(None, TINY)
    report = model_size_report(cfg, num_classes=7, num_cameras=3)
    model = build_model(size_config(cfg), num_classes=7, num_cameras=3)  # real weights on CPU, for the oracle
    assert report["total"] == sum(p.numel() for p in model.parameters())
    assert report["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    classifiers = sum(p.numel() for n, p in model.named_parameters() if n.startswith("classifier"))
    assert report["inference"] == report["total"] - classifiers
    rows = {name: (total, flops) for name, _, total, _, flops in report["rows"]}
    assert rows["backbone"][0] == sum(p.numel() for p in model.backbone.parameters())
    assert rows["prsd"][0] == sum(p.numel() for p in model.prsd.parameters())
    assert rows["backbone"][1] == vit_flops(4, 64, 32, 16, 64, 2, 32)
    top_level = [r for r in report["rows"] if r[1] == 0]
    assert sum(r[2] for r in top_level) == report["total"]
    assert report["flops"] >= sum(r[4] for r in top_level) > rows["backbone"][1]
    assert report["embedding_dim"] == model.embedding_dim == 64 + 32 + 64 + 10


@pytest.mark.parametrize("config, width, grid_tokens, dim, layers, proj, patch", [
    ("configs/sas_vit_b16.yml", 2058, (256, 128), 768, 12, 512, 16),
    ("configs/sas_vit_l14.yml", 2826, (252, 126), 1024, 24, 768, 14),
])
def test_paper_configs_report_without_weights(config, width, grid_tokens, dim, layers, proj, patch):
    report = model_size_report(load_config(config), num_classes=371)  # their PRETRAIN_PATH files are absent here
    assert report["embedding_dim"] == width and report["seq_len"] == 16
    rows = {name: (total, flops) for name, _, total, _, flops in report["rows"]}
    assert rows["backbone"][1] == vit_flops(16, *grid_tokens, patch, dim, layers, proj)


def test_cli_prints_the_table(capsys):
    assert main(["--num_classes", "5"] + TINY) == 0
    printed = capsys.readouterr().out
    assert "test embedding width: 170" in printed and "GFLOPs per clip" in printed and "prsd.aggregator" in printed
