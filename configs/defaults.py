"""The one yacs config of the project. Every key has a one-line comment and is read somewhere.

YAML files override these defaults (``configs/*.yml``), may inherit with ``_BASE_: other.yml``,
and command-line ``KEY VALUE`` pairs override both. Unknown keys are an error (see
``configs.load_config``).
"""
from yacs.config import CfgNode as CN

_C = CN()

# ----------------------------------------------------------------------------- model
_C.MODEL = CN()
# Device: "auto" (cuda if available, else cpu), "cpu", "cuda" or "cuda:N".
_C.MODEL.DEVICE = "auto"
# Backbone: an open_clip model name ("ViT-B-16", "ViT-L-14") or a built-in tiny one ("tiny-vit-16").
_C.MODEL.BACKBONE = "ViT-B-16"
# Pretrained CLIP weights: OpenAI TorchScript archive (.pt), open_clip/timm state dict (.pt/.pth/.bin) or .safetensors.
_C.MODEL.PRETRAIN_PATH = ""
# open_clip pretrained tag (e.g. "openai"), used only when PRETRAIN_PATH is empty and the machine is online.
_C.MODEL.PRETRAIN_TAG = ""
# QuickGELU in the CLIP blocks (OpenAI CLIP weights need it; False for GELU-trained open_clip weights).
_C.MODEL.QUICK_GELU = True
# Patch-embedding stride in pixels; 0 means equal to the patch size (non-overlapping patches).
_C.MODEL.STRIDE_SIZE = 0
# Resizing of the pretrained square positional embedding to the patch grid: "bilinear" (the authors') or "bicubic".
_C.MODEL.POS_EMBED_INTERP = "bilinear"
# Freeze conv1, class embedding, positional embedding and ln_pre (as the paper).
_C.MODEL.FREEZE_PATCH_EMBED = True
# Side information embedding: add a learned camera embedding to the class token.
_C.MODEL.SIE_CAMERA = True
# Side information embedding: also add a learned view (aerial/ground) embedding.
_C.MODEL.SIE_VIEW = False
# Scale of the SIE embeddings.
_C.MODEL.SIE_COE = 1.0
# Parts of the test embedding, concatenated in this order (any of cls, proj, tp, shape).
_C.MODEL.EMBED_PARTS = ["cls", "proj", "tp", "shape"]
# torch.compile by regions (each backbone block once, the heads, the loss, the memory update), train and eval.
_C.MODEL.COMPILE = False
# torch.compile mode when MODEL.COMPILE: "default", "max-autotune-no-cudagraphs" or "reduce-overhead" (CUDA graphs).
_C.MODEL.COMPILE_MODE = "default"

# Multi-proxy memory (MEVB).
_C.MODEL.MEMORY = CN()
# Turn the memory loss and its updates on.
_C.MODEL.MEMORY.ENABLED = True
# Proxies per identity: 1 = mean proxy only, 2 = mean + hard proxy.
_C.MODEL.MEMORY.NUM_PROXIES = 2
# Softmax temperature of the memory logits.
_C.MODEL.MEMORY.TEMPERATURE = 0.05
# Momentum m of the update: proxy <- normalise(m * proxy + (1 - m) * batch feature).
_C.MODEL.MEMORY.MOMENTUM = 0.1
# Update rule: "sequential" (the authors': per-sample moves in batch order, then the batch mean; hard sample
# against the moved mean) or "batch_mean" (one batch-mean move; hard sample against the pre-update mean).
_C.MODEL.MEMORY.UPDATE = "sequential"
# Rebuild the memory from training-set centroids every this many epochs (1 = every epoch).
_C.MODEL.MEMORY.REBUILD_PERIOD = 1
# BNNeck statistics of the rebuild: "batch" (the rebuilt clips' own, as the authors' train-mode BatchNorm; here
# over the whole training set) or "running" (eval mode: at epoch 1 the initial statistics, i.e. no standardising).
_C.MODEL.MEMORY.REBUILD_BN = "batch"
# Add the SIE camera/view embedding when encoding clips for the rebuild (the authors do not).
_C.MODEL.MEMORY.REBUILD_SIE = False
# L2-normalise each clip's feature before the class mean (the authors average unnormalised BN features).
_C.MODEL.MEMORY.REBUILD_NORMALIZE_CLIPS = False
# Frames of a rebuild clip (DATALOADER.SEQ_LEN of them): "blocks" (frame i*(n//T), the authors') or "even".
_C.MODEL.MEMORY.REBUILD_SAMPLING = "blocks"

# Multi-granularity temporal modelling (MGTM).
_C.MODEL.MGTM = CN()
# Turn MGTM (and f_tp / frame logits) on.
_C.MODEL.MGTM.ENABLED = True
# Window counts per granularity: 1 = whole clip, 2 = windows of T/2, 4 = windows of T/4.
_C.MODEL.MGTM.GRANULARITIES = [1, 2, 4]
# Spatial tokens kept per frame (adaptive average pooling of the patch grid) plus the class token.
_C.MODEL.MGTM.SPATIAL_TOKENS = 8
# Transformer layers per granularity.
_C.MODEL.MGTM.DEPTH = 1
# Attention heads.
_C.MODEL.MGTM.HEADS = 8
# Feed-forward width as a multiple of the token width.
_C.MODEL.MGTM.MLP_RATIO = 2.0
# Dropout inside the temporal transformer.
_C.MODEL.MGTM.DROPOUT = 0.0
# Temporal position encoding: "relative" (sinusoid of the frame's fraction of its window: the same at T=8 and 16),
# "sinusoidal" (absolute index: extrapolates past the training length), "learned" (interpolated) or "none".
_C.MODEL.MGTM.POS_ENCODING = "relative"
# Frame features f_frame: "whole" (the whole-clip level through its own LayerNorm, as the authors) or "fused"
# (the softmax-fused levels through the fusion's LayerNorm).
_C.MODEL.MGTM.FRAME_SOURCE = "whole"
# Detach the backbone tokens before MGTM (as the authors).
_C.MODEL.MGTM.DETACH_INPUT = True

# Prior-regularised shape dynamics (PRSD).
_C.MODEL.PRSD = CN()
# Turn PRSD (videowise shape feature and shape losses) on.
_C.MODEL.PRSD.ENABLED = True
# SMPL model file (.npz, or .pkl of plain arrays; see tools/convert_smpl.py); empty = parameters only.
_C.MODEL.PRSD.SMPL_MODEL_PATH = ""
# SMPL mean parameters (.npz with pose, shape, cam as in SPIN's smpl_mean_params.npz); empty = built-in.
_C.MODEL.PRSD.SMPL_MEAN_PARAMS = ""
# Pretrained regressor checkpoint (SPIN "model" or VIBE/TSM "gen_state_dict"); empty = random init.
_C.MODEL.PRSD.PRETRAINED = ""
# Read MODEL.PRSD.PRETRAINED and MODEL.PRSD.SMPL_MEAN_PARAMS (the paper configs name the authors' TSM and SPIN
# files); False starts the shape branch from random weights and the built-in means (CPU runs, tiny.yml).
_C.MODEL.PRSD.LOAD_PRETRAINED = True
# Width of the per-frame feature fed to the temporal encoder.
_C.MODEL.PRSD.FEAT_DIM = 2048
# Hidden width of the temporal encoder GRU and of the regressor MLP.
_C.MODEL.PRSD.HIDDEN_DIM = 1024
# Iterations of the iterative regressor.
_C.MODEL.PRSD.ITERATIONS = 3
# Aggregator transformer layers.
_C.MODEL.PRSD.AGG_LAYERS = 4
# Aggregator transformer heads.
_C.MODEL.PRSD.AGG_HEADS = 8
# Aggregator transformer feed-forward width.
_C.MODEL.PRSD.AGG_FFN_DIM = 4096
# Dropout in the iterative regressor MLP (the authors' and SPIN's 0.5).
_C.MODEL.PRSD.REGRESSOR_DROPOUT = 0.5
# Dropout in the aggregator transformer (the authors' 0.2).
_C.MODEL.PRSD.AGG_DROPOUT = 0.2
# BNNeck before the per-frame-position shape classifiers, which are then bias-free; False = plain Linear
# classifiers with bias on the framewise shapes (the authors').
_C.MODEL.PRSD.FRAMEWISE_BNNECK = False
# Detach the shape model's outputs (reproduces the authors' defect; off = trained end to end).
_C.MODEL.PRSD.DETACH_OUTPUT = False
# Detach the backbone tokens before PRSD, so the shape losses train the branch, not the CLIP encoder (as the authors).
_C.MODEL.PRSD.DETACH_INPUT = True
# Starting betas when SMPL_MEAN_PARAMS is empty: "prior" (LOSS.SHAPE_PRIOR_MEAN, the mean shape, as the authors) or "zero".
_C.MODEL.PRSD.INIT_BETAS = "prior"
# Decode betas and pose with SMPL and append normalised bone lengths to the shape cue (needs SMPL_MODEL_PATH).
_C.MODEL.PRSD.USE_BONE_LENGTHS = False

# ----------------------------------------------------------------------------- input
_C.INPUT = CN()
# Train frame size [height, width].
_C.INPUT.SIZE_TRAIN = [256, 128]
# Test frame size [height, width].
_C.INPUT.SIZE_TEST = [256, 128]
# Normalisation mean (ImageNet by default).
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
# Normalisation std (ImageNet by default).
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
# Probability of a clip-consistent horizontal flip.
_C.INPUT.FLIP_PROB = 0.5
# Probability of clip-consistent random erasing (same relative box in every frame).
_C.INPUT.ERASE_PROB = 0.5
# Value per channel written into the erased box of the normalised clip: the authors' (0.4914, 0.4822, 0.4465),
# the CIFAR mean used as a fill; [0, 0, 0] fills with the normalisation mean colour.
_C.INPUT.ERASE_FILL = [0.4914, 0.4822, 0.4465]
# Probability of a clip-consistent hue shift (the paper's VC-CJ).
_C.INPUT.HUE_PROB = 0.5
# Maximum hue shift (fraction of the hue circle).
_C.INPUT.HUE = 0.3
# Probability of the other colour jitters below (brightness, contrast, saturation).
_C.INPUT.JITTER_PROB = 0.0
# Brightness jitter strength.
_C.INPUT.BRIGHTNESS = 0.0
# Contrast jitter strength.
_C.INPUT.CONTRAST = 0.0
# Saturation jitter strength.
_C.INPUT.SATURATION = 0.0
# Probability of clip-consistent low-resolution simulation (downscale, upscale back).
_C.INPUT.LOWRES_PROB = 0.0
# Range [min, max] of the downscale factor of the low-resolution simulation.
_C.INPUT.LOWRES_SCALE = [0.1, 0.5]
# Shuffle frame order within a training clip (off: temporal order is kept; never applied at test).
_C.INPUT.SHUFFLE_FRAMES = False

# ----------------------------------------------------------------------------- data
_C.DATASETS = CN()
# Dataset name in the dataset registry.
_C.DATASETS.NAMES = "detreidx"
# Dataset root (train/ and case*/ folders inside).
_C.DATASETS.ROOT_DIR = "data/DetReIDXV1"
# Training identities held out as a labelled validation split (laid out like the three cases).
_C.DATASETS.VAL_IDS = 0
# Treat frame names that fit no DetReIDX scheme as ground frames instead of failing.
_C.DATASETS.UNKNOWN_NAMES_AS_GROUND = False
# Scan cache folder: a second start on an unchanged root skips listing its frames (keyed on the root and
# every tracklet folder's mtime). "auto": $XDG_CACHE_HOME/sas_vpreid/scan (~/.cache/...); "": no cache.
_C.DATASETS.SCAN_CACHE_DIR = "auto"
# Skip unreadable frames with a warning (and a count at the end) instead of failing.
_C.DATASETS.SKIP_CORRUPT_FRAMES = False
# Generate the synthetic XFD dataset into ROOT_DIR when it does not exist (demo).
_C.DATASETS.SYNTHETIC_IF_MISSING = False
# Synthetic generator: training identities.
_C.DATASETS.SYNTHETIC_IDS = 30
# Synthetic generator: test identities.
_C.DATASETS.SYNTHETIC_TEST_IDS = 20
# Synthetic generator: seed.
_C.DATASETS.SYNTHETIC_SEED = 0

_C.DATALOADER = CN()
# Loader worker processes.
_C.DATALOADER.NUM_WORKERS = 4
# Tracklets per identity in a batch (K of P x K).
_C.DATALOADER.NUM_INSTANCE = 4
# Frames per training clip.
_C.DATALOADER.SEQ_LEN = 8
# Pin host memory for faster host-to-GPU copies.
_C.DATALOADER.PIN_MEMORY = True

# ----------------------------------------------------------------------------- solver
_C.SOLVER = CN()
# Optimizer: "Adam", "AdamW" or "SGD".
_C.SOLVER.OPTIMIZER = "Adam"
# Training epochs.
_C.SOLVER.MAX_EPOCHS = 40
# Base learning rate (heads).
_C.SOLVER.BASE_LR = 3.5e-4
# Learning rate of the CLIP image encoder.
_C.SOLVER.BACKBONE_LR = 5e-6
# Which parameters are biases: "substring" ("bias" anywhere in the name, as the authors: GRU bias_ih/bias_hh
# too) or "suffix" (names ending in "bias").
_C.SOLVER.BIAS_NAME_MATCH = "substring"
# LR multiplier for biases outside the CLIP encoder.
_C.SOLVER.BIAS_LR_FACTOR = 2.0
# LR multiplier for the CLIP encoder's biases (1.0 = the backbone LR, as the authors; 2.0 = BIAS_LR_FACTOR's choice).
_C.SOLVER.BACKBONE_BIAS_LR_FACTOR = 1.0
# LR multiplier for the classifiers listed in HEAD_LR_CLASSIFIERS.
_C.SOLVER.HEAD_LR_FACTOR = 2.0
# Classifiers that learn at HEAD_LR_FACTOR x: tp (MGTM) and frame, as the authors (add shape, framewise_shape for the PRSD ones).
_C.SOLVER.HEAD_LR_CLASSIFIERS = ["tp", "frame"]
# Weight decay.
_C.SOLVER.WEIGHT_DECAY = 1e-4
# Weight decay of biases.
_C.SOLVER.WEIGHT_DECAY_BIAS = 1e-4
# SGD momentum.
_C.SOLVER.MOMENTUM = 0.9
# LR schedule after warmup: "multistep" or "cosine".
_C.SOLVER.SCHEDULER = "multistep"
# Epochs at which multistep multiplies the LR by GAMMA.
_C.SOLVER.STEPS = [10, 20, 30]
# Multistep decay factor.
_C.SOLVER.GAMMA = 0.1
# Linear warmup epochs.
_C.SOLVER.WARMUP_EPOCHS = 10
# LR factor at the start of warmup.
_C.SOLVER.WARMUP_FACTOR = 0.1
# Cosine schedule: final LR as a fraction of the initial LR.
_C.SOLVER.COSINE_FINAL_FACTOR = 0.01
# Clips per batch over all processes (P x K; P = IMS_PER_BATCH / NUM_INSTANCE).
_C.SOLVER.IMS_PER_BATCH = 16
# Mixed precision: "auto" (bf16 on CUDA where supported, fp16 otherwise, off on CPU), "bf16", "fp16" or "off".
_C.SOLVER.AMP = "auto"
# Clip the gradient norm to this value (0 = off).
_C.SOLVER.GRAD_CLIP = 0.0
# Accumulate gradients over this many batches per optimizer step.
_C.SOLVER.ACCUM_STEPS = 1
# Random seed.
_C.SOLVER.SEED = 1234
# Save checkpoint_epoch<N>.pth every this many epochs (checkpoint_last.pth every epoch).
_C.SOLVER.CHECKPOINT_PERIOD = 5
# Log a line every this many steps.
_C.SOLVER.LOG_PERIOD = 50
# Evaluate on the validation split every this many epochs (0 = never).
_C.SOLVER.EVAL_PERIOD = 5
# Convert BatchNorm layers to SyncBatchNorm under DDP.
_C.SOLVER.SYNC_BN = False

# ----------------------------------------------------------------------------- loss
_C.LOSS = CN()
# Weight of each label-smoothed ID loss (cls, tp, shape).
_C.LOSS.ID_WEIGHT = 0.25
# Weight of each triplet loss (f_cls, f_proj, f_tp, shape).
_C.LOSS.TRIPLET_WEIGHT = 1.0
# Weight of the multi-proxy memory loss.
_C.LOSS.MEMORY_WEIGHT = 1.0
# Weight of the frame-level ID loss (divided by T).
_C.LOSS.FRAME_ID_WEIGHT = 1.0
# Weight of the framewise shape ID loss (divided by T).
_C.LOSS.SHAPE_ID_WEIGHT = 1.0
# Weight of the shape prior MSE(betas, mean).
_C.LOSS.SHAPE_PRIOR_WEIGHT = 0.5
# Label smoothing epsilon.
_C.LOSS.LABEL_SMOOTH = 0.1
# Triplet margin.
_C.LOSS.TRIPLET_MARGIN = 0.3
# Mean of the SMPL betas prior.
_C.LOSS.SHAPE_PRIOR_MEAN = [0.2056, 0.3356, -0.3507, 0.3561, 0.4175, 0.0309, 0.3048, 0.2361, 0.2091, 0.3121]

# ----------------------------------------------------------------------------- test
_C.TEST = CN()
# Clips per inference batch.
_C.TEST.IMS_PER_BATCH = 32
# Frames per test clip.
_C.TEST.SEQ_LEN = 16
# Test sampling: "blocks" (frame i*(n//SEQ_LEN), the authors'), "even" (frame floor(i*n/SEQ_LEN): covers the
# whole tracklet) or "dense" (all frames in chunks, averaged).
_C.TEST.SAMPLING = "blocks"
# Distance: "cosine" or "euclidean".
_C.TEST.DISTANCE = "cosine"
# Use k-reciprocal re-ranking.
_C.TEST.RERANK = False
# Re-ranking k1.
_C.TEST.RERANK_K1 = 20
# Re-ranking k2.
_C.TEST.RERANK_K2 = 6
# Re-ranking lambda (weight of the original distance).
_C.TEST.RERANK_LAMBDA = 0.3
# Junk rule: "tracklet" (same pid and same tracklet id, the challenge scorer's) or "camera" (same pid and camera, Market-1501).
_C.TEST.JUNK_RULE = "tracklet"
# Average precision: "trapezoid" (the challenge scorer's) or "standard" (mean precision at hits).
_C.TEST.AP_MODE = "trapezoid"
# Queries per chunk of the distance / metric computation (bounds memory).
_C.TEST.QUERY_CHUNK = 512
# After training, evaluate the test cases found under DATASETS.ROOT_DIR and write the submission CSV.
_C.TEST.EVAL_AFTER_TRAINING = True
# Weights of that end-of-training evaluation: "best" (checkpoint_best.pth, when there is a validation split) or "last".
_C.TEST.FINAL_WEIGHTS = "best"
# Cases to evaluate by default (1 = aerial->ground, 2 = ground->aerial, 3 = aerial->aerial).
_C.TEST.CASES = [1, 2, 3]

# Output folder (checkpoints, logs, metrics, CSVs).
_C.OUTPUT_DIR = "outputs/default"


def get_defaults() -> CN:
    """A fresh copy of the defaults (never mutate the module-level node)."""
    return _C.clone()


# Keys that came with the authors' module details (issue 18): the value that rebuilds a checkpoint whose
# stored config predates the key (a stored config lacking it was trained with this behaviour).
LEGACY_VALUES = {
    "MODEL.POS_EMBED_INTERP": "bicubic",
    "MODEL.MEMORY.UPDATE": "batch_mean",
    "MODEL.MEMORY.REBUILD_BN": "running",
    "MODEL.MEMORY.REBUILD_SIE": True,
    "MODEL.MEMORY.REBUILD_NORMALIZE_CLIPS": True,
    "MODEL.MEMORY.REBUILD_SAMPLING": "even",
    "MODEL.MGTM.FRAME_SOURCE": "fused",
    "MODEL.PRSD.FRAMEWISE_BNNECK": True,
    "SOLVER.BIAS_NAME_MATCH": "suffix",
    "INPUT.ERASE_FILL": [0.0, 0.0, 0.0],
}
# Keys replaced by others: an old stored value sets each of the new keys.
RENAMED_KEYS = {
    "MODEL.PRSD.DROPOUT": ("MODEL.PRSD.REGRESSOR_DROPOUT", "MODEL.PRSD.AGG_DROPOUT"),
}


def upgrade_stored_config(data: dict) -> dict:
    """A checkpoint's stored config (nested dict) in today's keys: renamed keys moved, keys it predates
    set to their :data:`LEGACY_VALUES`. Returns a new dict; ``data`` is left as it is."""
    import copy

    data = copy.deepcopy(data)

    def lookup(path):
        node = data
        for part in path.split(".")[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                return None, False
        leaf = path.split(".")[-1]
        return node, isinstance(node, dict) and leaf in node

    def assign(path, value):
        node = data
        for part in path.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[path.split(".")[-1]] = value

    for old, new_keys in RENAMED_KEYS.items():
        node, present = lookup(old)
        if present:
            value = node.pop(old.split(".")[-1])
            for key in new_keys:
                if not lookup(key)[1]:
                    assign(key, value)
    if data.get("MODEL"):  # a stored config of a real run (never an empty or partial test stub)
        for key, value in LEGACY_VALUES.items():
            if not lookup(key)[1]:
                assign(key, value)
    return data
