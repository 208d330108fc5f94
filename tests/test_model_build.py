"""GPU efficiency (issue 10) on CPU: one graph each for the SAS forward (train/eval), the loss and the
memory update; regional MODEL.COMPILE equals eager (outputs and gradients); no host sync on the hot
path; the stacked loss kernels equal the per-term formulas; the trainer's deferred finite check."""
import copy
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from configs import load_config
from loss.build import build_loss
from loss.softmax import label_smoothed_cross_entropy, stacked_label_smoothed_cross_entropy
from loss.triplet import batch_hard_triplet, stacked_batch_hard_triplet
from model.build import build_model, compile_options, compile_regions
from processor.step import TrainStep
from processor.trainer import NonFiniteLossError, Trainer
from solver.optimizer import build_optimizer

from tests.test_sas_model import NUM_CAMERAS, NUM_CLASSES
from tests.test_sas_model import TINY as SAS_TINY

TINY = SAS_TINY + ["MODEL.PRSD.REGRESSOR_DROPOUT", "0.0", "MODEL.PRSD.AGG_DROPOUT", "0.0"]   # compiled vs eager: no dropout noise


def tiny(*opts):
    torch.manual_seed(0)
    cfg = load_config(None, TINY + list(opts))
    return cfg, build_model(cfg, NUM_CLASSES, NUM_CAMERAS)


def batch(clips=4, frames=4):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(clips, frames, 3, 64, 32, generator=gen), torch.arange(clips) % NUM_CAMERAS,
            torch.arange(clips) % 2, torch.arange(clips) // 2 % NUM_CLASSES)


class GraphCounter:
    """A torch.compile backend that runs graphs eagerly and counts them."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward


class HostSyncDetector(TorchDispatchMode):
    """Records every op that reads a tensor value back to Python (.item(), bool(t), .tolist(), nonzero)."""

    SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique")

    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        if func.name().split(".")[0] in self.SYNC_OPS:
            self.syncs.append(func.name())
        return func(*args, **(kwargs or {}))


# ----------------------------------------------------------------------------- one graph each
@pytest.mark.parametrize("training", [True, False])
def test_sas_forward_traces_as_one_graph(training):
    _, model = tiny()
    model.train(training)
    frames, camids, views, labels = batch()
    counter = GraphCounter()
    compile_options()  # sets allow_rnn for the PRSD GRUs
    with torch.no_grad():
        out = torch.compile(model, fullgraph=True, backend=counter)(frames, camids, views, labels)
    assert len(counter.graphs) == 1
    assert ("embedding" in out) != training


def test_loss_and_memory_update_trace_as_one_graph_each():
    cfg, model = tiny()
    frames, camids, views, labels = batch()
    out = model.train()(frames, camids, views, labels)
    loss_fn = build_loss(cfg, NUM_CLASSES)
    counter = GraphCounter()
    total, terms = torch.compile(loss_fn.__call__, fullgraph=True, backend=counter)(out, labels)
    eager_total, _ = loss_fn(out, labels)
    assert len(counter.graphs) == 1 and len(terms) == 11
    torch.testing.assert_close(total, eager_total)
    expected = copy.deepcopy(model.memory)
    expected.update(out["memory_feat"].detach(), labels)
    counter = GraphCounter()
    torch.compile(model.memory.update, fullgraph=True, backend=counter)(out["memory_feat"].detach(), labels)
    assert len(counter.graphs) == 1
    torch.testing.assert_close(model.memory.proxies, expected.proxies)


@pytest.mark.parametrize("frames", [8, 6, 3])
def test_mgtm_window_layout_is_static_for_any_clip_length(frames):
    _, model = tiny("DATALOADER.SEQ_LEN", "8")
    tokens = torch.randn(2, frames, 1 + 4 * 2, 64)
    counter = GraphCounter()
    got = torch.compile(model.mgtm, fullgraph=True, backend=counter)(tokens, (4, 2))
    assert len(counter.graphs) == 1
    torch.testing.assert_close(got, model.mgtm(tokens))


# ----------------------------------------------------------------------------- no host sync
def train_step(cfg, model, device=torch.device("cpu")) -> TrainStep:
    """The trainer's step (processor.step) for ``model``, built as the trainer builds it."""
    return TrainStep.from_config(cfg, model, build_loss(cfg, NUM_CLASSES, device), build_optimizer(cfg, model), device)


def step_batch(device=torch.device("cpu")) -> dict:
    return dict(zip(("frames", "camids", "views", "labels"), (t.to(device) for t in batch())))


def test_training_hot_path_never_reads_a_tensor_back_to_the_host():
    """The training step (processor.step.TrainStep): forward, every loss term, backward (accumulated),
    clipping, the fused Adam step and the memory update: no .item()/bool()/nonzero."""
    cfg, model = tiny("SOLVER.ACCUM_STEPS", "2", "SOLVER.GRAD_CLIP", "1.0")
    step = train_step(cfg, model.train())
    detector = HostSyncDetector()
    inputs = step_batch()
    with detector:
        step(inputs, optimizer_step=False)
        values = step(inputs, optimizer_step=True).values
    assert detector.syncs == []
    # The detector does see a sync when there is one.
    with detector:
        bool(values[0] > 0)
    assert detector.syncs == ["aten::_local_scalar_dense"]



class HostTensorDetector(TorchDispatchMode):
    """Records every op that takes or makes a CPU tensor. On a GPU, moving a host tensor to the device
    without pinned memory is a copy that waits for the GPU's queue to drain: a host sync."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in tensors):
            self.ops.append(func.name())
        return out


@pytest.mark.parametrize("training", [True, False])
def test_a_step_on_an_accelerator_touches_no_host_tensor(training):
    """The meta device stands in for a GPU: the model, the batch and the loss live there, and no op of
    the training step (processor.step.TrainStep: forward, loss, backward, clipping, optimizer step,
    memory update, the step's values) may read a host tensor (the loss's shape prior was once a CPU
    tensor copied to the device in every step). SGD: fused Adam does not run on the meta device (on
    CUDA, bench/gpu_step.py counts the step's host syncs)."""
    cfg, model = tiny("SOLVER.OPTIMIZER", "SGD", "SOLVER.GRAD_CLIP", "1.0")
    device = torch.device("meta")
    model = model.to(device).train(training)
    step = train_step(cfg, model, device)
    inputs = step_batch(device)
    frames, camids, views = inputs["frames"], inputs["camids"], inputs["views"]
    detector = HostTensorDetector()
    with detector:
        if training:
            values = step(inputs)
        else:
            with torch.no_grad():
                model(frames, camids, views)
    assert detector.ops == []
    if training:
        assert values.values.device == device and values.names[0] == "loss"
    # The detector sees a host tensor when there is one.
    with detector:
        frames + torch.ones(()).to(device)
    assert detector.ops == ["aten::ones", "aten::_to_copy"]

# ----------------------------------------------------------------------------- MODEL.COMPILE
def test_model_compile_builds_compiled_regions_and_checks_the_mode():
    cfg, model = tiny("MODEL.COMPILE", "True")
    _, plain = tiny()
    from loss.build import SASLoss

    assert not isinstance(build_loss(cfg, NUM_CLASSES), SASLoss)  # the loss is one compiled function
    assert isinstance(build_loss(load_config(None, TINY), NUM_CLASSES), SASLoss)
    assert all(getattr(block, "_compiled_call_impl", None) is not None for block in model.backbone.transformer.resblocks)
    assert all(getattr(block, "_compiled_call_impl", None) is None for block in plain.backbone.transformer.resblocks)
    # The heads and the memory update are compiled functions set on the instance.
    assert {"heads", "update"} <= set(model.__dict__) | set(model.memory.__dict__)
    assert "heads" not in plain.__dict__ and "update" not in plain.memory.__dict__
    assert set(model.state_dict()) == set(plain.state_dict())  # parameter names unchanged
    with pytest.raises(ValueError, match="MODEL.COMPILE_MODE"):
        tiny("MODEL.COMPILE", "True", "MODEL.COMPILE_MODE", "fast")


def test_model_compile_turns_off_the_fused_attention_fast_path():
    # nn.TransformerEncoder's fused fp32 eval path fails inductor's stride checks (PRSD's aggregator):
    # compiling must route it through the unfused path that training uses.
    torch.backends.mha.set_fastpath_enabled(True)
    try:
        tiny("MODEL.COMPILE", "True")
        assert not torch.backends.mha.get_fastpath_enabled()
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def test_regional_compile_equals_eager_in_outputs_and_gradients():
    """aot_eager (the autograd graphs torch.compile builds, without a code generator: inductor needs minutes
    on this CPU); every block one compilation; outputs, loss terms and every gradient equal eager."""
    cfg, eager = tiny()
    compiled = compile_regions(copy.deepcopy(eager), backend="aot_eager")
    frames, camids, views, labels = batch()
    loss_fn = build_loss(cfg, NUM_CLASSES)
    compiled_loss = torch.compile(loss_fn.__call__, **compile_options("default", "aot_eager"))
    results = []
    for model, fn in ((eager, loss_fn), (compiled, compiled_loss)):
        model.train()
        out = model(frames, camids, views, labels)
        total, terms = fn(out, labels)
        total.backward()
        model.memory.update(out["memory_feat"].detach(), labels)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.eval()
        with torch.no_grad():
            embedding = model(frames, camids, views)["embedding"]
        results.append((terms, grads, embedding, model.memory.proxies.clone()))
    (terms_e, grads_e, emb_e, prox_e), (terms_c, grads_c, emb_c, prox_c) = results
    assert set(terms_e) == set(terms_c) and set(grads_e) == set(grads_c) and len(grads_e) > 20
    for name in terms_e:
        torch.testing.assert_close(terms_c[name], terms_e[name], rtol=1e-4, atol=1e-5, msg=name)
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-3, atol=1e-5, msg=name)
    torch.testing.assert_close(emb_c, emb_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(prox_c, prox_e, rtol=1e-4, atol=1e-5)


def test_every_backbone_block_shares_one_compilation():
    _, model = tiny()
    counter = GraphCounter()
    for block in model.backbone.transformer.resblocks:
        block.compile(backend=counter, dynamic=False)
    frames, camids, views, _ = batch()
    with torch.no_grad():
        model.backbone(frames.flatten(0, 1), camids.repeat_interleave(4), views.repeat_interleave(4))
    assert len(model.backbone.transformer.resblocks) == 2 and len(counter.graphs) == 1


def test_compiled_inference_pads_a_short_last_batch_into_the_same_graph():
    """Each new batch shape recompiles (static shapes): a compiled model's short last batch is padded to
    the loader's batch, the padding's outputs dropped; an eager model sees the short batch as it is."""
    from processor.encoding import forward_clips

    _, model = tiny()
    reference = copy.deepcopy(model).eval()
    counter = GraphCounter()
    compile_regions(model, backend=counter)
    model.eval()
    frames, camids, views, _ = batch(clips=4)
    cpu = torch.device("cpu")
    with torch.no_grad():
        full = forward_clips(model, frames, camids, views, cpu, None, ("embedding",), batch_size=4)["embedding"]
        graphs = len(counter.graphs)
        short = forward_clips(model, frames[:3], camids[:3], views[:3], cpu, None, ("embedding",),
                              batch_size=4)["embedding"]
        assert len(counter.graphs) == graphs  # no recompilation for the short batch
        want = reference(frames, camids, views)["embedding"]
        torch.testing.assert_close(full, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(short, want[:3], rtol=1e-4, atol=1e-5)
        seen = []
        reference.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
        forward_clips(reference, frames[:3], camids[:3], views[:3], cpu, None, ("embedding",), batch_size=4)
    assert seen == [3]


# ----------------------------------------------------------------------------- stacked loss kernels
def test_stacked_triplet_equals_each_triplet_alone():
    gen = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])  # identity 2 has no positive: left out of the mean
    feats = [torch.randn(8, d, generator=gen) for d in (64, 32, 64, 10)]
    stacked = stacked_batch_hard_triplet(feats, labels, margin=0.3)
    expected = torch.stack([batch_hard_triplet(f, labels, 0.3) for f in feats])
    torch.testing.assert_close(stacked, expected, rtol=1e-5, atol=1e-6)


def test_stacked_cross_entropy_equals_each_alone():
    gen = torch.Generator().manual_seed(4)
    logits = [torch.randn(n, 7, generator=gen) for n in (4, 4, 16, 12)]
    labels = [torch.randint(0, 7, (n,), generator=gen) for n in (4, 4, 16, 12)]
    got = stacked_label_smoothed_cross_entropy(logits, labels, 0.1)
    expected = torch.stack([label_smoothed_cross_entropy(lg, lb, 0.1) for lg, lb in zip(logits, labels)])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    same = stacked_label_smoothed_cross_entropy(logits[:2], labels[:2], 0.1)  # equal sizes: the view path
    torch.testing.assert_close(same, expected[:2], rtol=1e-5, atol=1e-6)


def test_sas_loss_terms_equal_the_per_term_formulas():
    from loss.shape import shape_prior_loss
    from loss.softmax import framewise_cross_entropy, memory_loss

    cfg, model = tiny()
    frames, camids, views, labels = batch()
    out = model.train()(frames, camids, views, labels)
    total, terms = build_loss(cfg, NUM_CLASSES)(out, labels)
    lc = cfg.LOSS
    expected = {f"id_{k}": lc.ID_WEIGHT * label_smoothed_cross_entropy(v, labels, lc.LABEL_SMOOTH)
                for k, v in out["id_logits"].items()}
    expected.update({f"tri_{k}": lc.TRIPLET_WEIGHT * batch_hard_triplet(v, labels, lc.TRIPLET_MARGIN)
                     for k, v in out["triplet_feats"].items()})
    expected["memory"] = lc.MEMORY_WEIGHT * memory_loss(out["memory_logits"], labels)
    expected["frame_id"] = lc.FRAME_ID_WEIGHT * framewise_cross_entropy(out["frame_logits"], labels, lc.LABEL_SMOOTH)
    expected["shape_id"] = lc.SHAPE_ID_WEIGHT * framewise_cross_entropy(out["framewise_shape_logits"], labels,
                                                                        lc.LABEL_SMOOTH)
    expected["shape_prior"] = lc.SHAPE_PRIOR_WEIGHT * shape_prior_loss(
        out["betas"], torch.tensor(lc.SHAPE_PRIOR_MEAN))
    assert list(terms) == list(expected)  # same terms, same order
    for name in expected:
        # Distances by the Gram expansion are ill-conditioned for near-identical features (the shape
        # features of an untrained model are ~0.02 apart at norm ~2): bmm vs mm rounding shows at 1e-5.
        tolerance = 1e-3 if name.startswith("tri_") else 1e-5
        torch.testing.assert_close(terms[name], expected[name], rtol=tolerance, atol=1e-6, msg=name)
    torch.testing.assert_close(total, sum(expected.values()), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- deferred finite check
def flush(pending, names, epoch, step, global_step):
    """Trainer._flush_step_values on a stand-in holding only what it reads (no dataset, no model)."""
    trainer = types.SimpleNamespace(world_size=1, global_step=global_step, output_dir="out")
    trainer._raise_non_finite = types.MethodType(Trainer._raise_non_finite, trainer)
    meters = {name: [] for name in names}
    Trainer._flush_step_values(trainer, pending, names, meters, epoch, step)
    return meters


def test_log_step_flush_moves_every_step_value_once():
    names = ["loss", "id_appearance", "tri_cls", "acc"]
    pending = [torch.tensor([1.0, 0.6, 0.4, 0.5]), torch.tensor([2.0, 1.5, 0.5, 0.25])]
    meters = flush(pending, names, epoch=1, step=10, global_step=10)
    expected = {"loss": [1.0, 2.0], "id_appearance": [0.6, 1.5], "tri_cls": [0.4, 0.5], "acc": [0.5, 0.25]}
    assert {k: pytest.approx(v) for k, v in expected.items()} == meters
    assert pending == []


def test_deferred_finite_check_names_the_first_bad_step_and_term():
    names = ["loss", "id_appearance", "tri_cls", "acc"]
    nan = float("nan")
    pending = [torch.tensor([1.0, 0.6, 0.4, nan]),  # a NaN accuracy is no loss problem
               torch.tensor([nan, 0.5, nan, 0.5]), torch.tensor([nan, nan, nan, 0.5])]
    with pytest.raises(NonFiniteLossError, match=r"epoch 3, step 6 \(global step 26\) in term\(s\): tri_cls\."):
        flush(pending, names, epoch=3, step=7, global_step=27)


def test_deferred_finite_check_reports_an_overflowing_total():
    pending = [torch.tensor([float("inf"), 3e38, 3e38])]
    with pytest.raises(NonFiniteLossError, match=r"step 4 .*overflow .*id_shape"):
        flush(pending, ["loss", "id_tp", "id_shape"], epoch=1, step=4, global_step=4)
