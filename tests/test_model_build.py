"""model/build.py's torch.compile support (issue 10), on CPU: one graph each for the SAS forward (train/eval),
the loss, the memory update and MGTM at any clip length; MODEL.COMPILE builds compiled regions that equal eager
(outputs and gradients), share one compilation across the backbone blocks, and pad a short last batch.
(No host sync in the training step: test_step.py; the stacked loss kernels: test_loss.py.)"""
import copy

import pytest
import torch

from configs import load_config
from loss.build import build_loss
from model.build import compile_options, compile_regions
from tests.helpers.models import NO_DROPOUT, NUM_CLASSES, TINY_SAS, make_clips, make_tiny_sas


class GraphCounter:
    """A torch.compile backend that runs graphs eagerly and counts them."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward


# ----------------------------------------------------------------------------- one graph each
@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False])
def test_sas_forward_traces_as_one_graph(training):
    _, model = make_tiny_sas(*NO_DROPOUT)
    model.train(training)
    frames, camids, views, labels = make_clips(4)
    counter = GraphCounter()
    compile_options()  # sets allow_rnn for the PRSD GRUs
    with torch.no_grad():
        out = torch.compile(model, fullgraph=True, backend=counter)(frames, camids, views, labels)
    assert len(counter.graphs) == 1
    assert ("embedding" in out) != training


@pytest.mark.slow
def test_loss_and_memory_update_trace_as_one_graph_each():
    cfg, model = make_tiny_sas(*NO_DROPOUT)
    frames, camids, views, labels = make_clips(4)
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


@pytest.mark.slow
@pytest.mark.parametrize("frames", [8, 6, 3])
def test_mgtm_window_layout_is_static_for_any_clip_length(frames):
    _, model = make_tiny_sas(*NO_DROPOUT, "DATALOADER.SEQ_LEN", "8")
    tokens = torch.randn(2, frames, 1 + 4 * 2, 64)
    counter = GraphCounter()
    got = torch.compile(model.mgtm, fullgraph=True, backend=counter)(tokens, (4, 2))
    assert len(counter.graphs) == 1
    torch.testing.assert_close(got, model.mgtm(tokens))


# ----------------------------------------------------------------------------- MODEL.COMPILE
def test_model_compile_builds_compiled_regions_and_checks_the_mode():
    cfg, model = make_tiny_sas(*NO_DROPOUT, "MODEL.COMPILE", "True")
    _, plain = make_tiny_sas(*NO_DROPOUT)
    from loss.build import SASLoss

    assert not isinstance(build_loss(cfg, NUM_CLASSES), SASLoss)  # the loss is one compiled function
    assert isinstance(build_loss(load_config(None, TINY_SAS + NO_DROPOUT), NUM_CLASSES), SASLoss)
    assert all(getattr(block, "_compiled_call_impl", None) is not None for block in model.backbone.transformer.resblocks)
    assert all(getattr(block, "_compiled_call_impl", None) is None for block in plain.backbone.transformer.resblocks)
    # The heads and the memory update are compiled functions set on the instance.
    assert {"heads", "update"} <= set(model.__dict__) | set(model.memory.__dict__)
    assert "heads" not in plain.__dict__ and "update" not in plain.memory.__dict__
    assert set(model.state_dict()) == set(plain.state_dict())  # parameter names unchanged
    with pytest.raises(ValueError, match="MODEL.COMPILE_MODE"):
        make_tiny_sas(*NO_DROPOUT, "MODEL.COMPILE", "True", "MODEL.COMPILE_MODE", "fast")


def test_model_compile_turns_off_the_fused_attention_fast_path():
    # nn.TransformerEncoder's fused fp32 eval path fails inductor's stride checks (PRSD's aggregator):
    # compiling must route it through the unfused path that training uses.
    torch.backends.mha.set_fastpath_enabled(True)
    try:
        make_tiny_sas(*NO_DROPOUT, "MODEL.COMPILE", "True")
        assert not torch.backends.mha.get_fastpath_enabled()
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


@pytest.mark.slow
def test_regional_compile_equals_eager_in_outputs_and_gradients():
    """aot_eager (the autograd graphs torch.compile builds, without a code generator: inductor needs minutes
    on this CPU); every block one compilation; outputs, loss terms and every gradient equal eager."""
    cfg, eager = make_tiny_sas(*NO_DROPOUT)
    compiled = compile_regions(copy.deepcopy(eager), backend="aot_eager")
    frames, camids, views, labels = make_clips(4)
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
    _, model = make_tiny_sas(*NO_DROPOUT)
    counter = GraphCounter()
    for block in model.backbone.transformer.resblocks:
        block.compile(backend=counter, dynamic=False)
    frames, camids, views, _ = make_clips(4)
    with torch.no_grad():
        model.backbone(frames.flatten(0, 1), camids.repeat_interleave(4), views.repeat_interleave(4))
    assert len(model.backbone.transformer.resblocks) == 2 and len(counter.graphs) == 1


@pytest.mark.slow
def test_compiled_inference_pads_a_short_last_batch_into_the_same_graph():
    """Each new batch shape recompiles (static shapes): a compiled model's short last batch is padded to
    the loader's batch, the padding's outputs dropped; an eager model sees the short batch as it is."""
    from processor.encoding import forward_clips

    _, model = make_tiny_sas(*NO_DROPOUT)
    reference = copy.deepcopy(model).eval()
    counter = GraphCounter()
    compile_regions(model, backend=counter)
    model.eval()
    frames, camids, views, _ = make_clips(4)
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


def test_cuda_graph_steps_follow_the_compile_mode():
    for mode, backend, expected in (("reduce-overhead", "inductor", True), ("default", "inductor", False),
                                    ("reduce-overhead", "eager", False)):
        _, model = make_tiny_sas()
        compile_regions(model, mode, backend=backend)  # lazy: nothing is compiled until a call
        assert model.cuda_graph_steps is expected, (mode, backend)
