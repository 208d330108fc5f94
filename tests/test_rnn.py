"""model.rnn: under torch.compile a GRU is one opaque op (sas::gru) with the same outputs and gradients
as nn.GRU; outside torch.compile it is nn.GRU itself. The CUDA cases (cuDNN) run where a GPU is."""
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import model.rnn as rnn
from model.rnn import gru_op, run_gru
from tests.helpers.paths import REPO_ROOT

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def allow_rnn():
    # Dynamo wraps GRU modules only with allow_rnn (model.build.compile_options sets it for MODEL.COMPILE).
    # Every test compiles run_gru anew: without a reset its compilations pile up across the tests (one per
    # device, backend and autocast state) until Dynamo's recompile limit refuses the next (seen on CUDA).
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        yield
    torch._dynamo.reset()


def gru_and_inputs(input_dim=6, hidden=5, layers=2, batch=3, frames=4, seed=0, device="cpu"):
    torch.manual_seed(seed)
    gru = nn.GRU(input_dim, hidden, num_layers=layers, batch_first=True).to(device)
    return gru, torch.randn(batch, frames, input_dim, device=device, requires_grad=True)


def gradients(output, gru, inputs, weight):
    return torch.autograd.grad((output * weight).sum(), [inputs, *gru.parameters()])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layers", [1, 2])
def test_compiled_gru_equals_nn_gru_in_outputs_and_gradients(layers, device):
    gru, inputs = gru_and_inputs(layers=layers, device=device)
    backends = ["aot_eager"] + (["inductor"] if device == "cuda" else [])  # Inductor on CPU: minutes
    for backend in backends:
        compiled = torch.compile(run_gru, backend=backend, fullgraph=True)
        with warnings.catch_warnings(record=True) as caught:
            got, want = compiled(gru, inputs), gru(inputs)[0]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            weight = torch.randn_like(want)
            for a, b in zip(gradients(got, gru, inputs, weight), gradients(want, gru, inputs, weight)):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        # cuDNN's note that it packs the per-call weights is silenced (it repeated in every log)
        assert not [w for w in caught if "contiguous chunk" in str(w.message)]


@pytest.mark.slow
def test_the_weight_packing_warning_is_silenced_for_this_module_only():
    # A fresh interpreter: pytest puts its own "always" filter in front of every test's warnings.
    code = ("import warnings, model.rnn\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    for module in ('model.rnn', 'elsewhere'):\n"
            "        warnings.warn_explicit('RNN module weights are not part of single contiguous chunk of memory.',\n"
            "                               UserWarning, module + '.py', 1, module=module)\n"
            "print([w.filename for w in caught])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert result.stdout.strip() == "['elsewhere.py']"


def test_weight_gradients_sharing_one_buffer_are_returned_as_copies(monkeypatch):
    """cuDNN returns the weight gradients as views of one flat buffer; a custom op may not return
    aliased outputs (this fails on CUDA without the copies, and here with gradients made to alias)."""
    grad = torch.autograd.grad

    def aliased_grad(outputs, leaves, grad_outputs=None, **kwargs):
        grads = grad(outputs, leaves, grad_outputs, **kwargs)
        flat = torch.cat([g.flatten() for g in grads[1:]])
        views, start = [], 0
        for g in grads[1:]:
            views.append(flat[start:start + g.numel()].view_as(g))
            start += g.numel()
        return (grads[0], *views)

    monkeypatch.setattr(rnn.torch.autograd, "grad", aliased_grad)
    gru, inputs = gru_and_inputs()
    compiled = torch.compile(run_gru, backend="aot_eager", fullgraph=True)
    compiled(gru, inputs).sum().backward()
    assert all(p.grad is not None for p in gru.parameters())


def test_compiled_graph_holds_one_gru_op_not_its_time_steps():
    gru, inputs = gru_and_inputs(frames=8)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(run_gru, backend=backend, fullgraph=True)(gru, inputs)
    targets = [str(node.target) for gm in graphs for node in gm.graph.nodes if node.op == "call_function"]
    assert targets.count("sas.gru.default") == 1
    assert not any("gru" in t and "sas" not in t for t in targets)  # no aten GRU to decompose


@pytest.mark.parametrize("device", DEVICES)
def test_gru_op_meets_the_custom_op_contract(device):
    gru, inputs = gru_and_inputs(device=device)
    weights = [w.detach() for w in gru._flat_weights]
    torch.library.opcheck(gru_op, (inputs.detach().requires_grad_(), weights, gru.num_layers))


def test_outside_compile_run_gru_is_the_module_call():
    gru, inputs = gru_and_inputs()
    calls = []
    gru.register_forward_hook(lambda *args: calls.append(1))
    torch.testing.assert_close(run_gru(gru, inputs), gru(inputs)[0])
    assert len(calls) == 2


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_gru_under_autocast_runs_in_the_input_dtype(device, backend):
    """bf16 in, bf16 out, fp32 weight gradients; CUDA autocast (fp16 for cuDNN RNNs) does not reach in."""
    gru, inputs = gru_and_inputs(device=device)
    compiled = torch.compile(run_gru, backend=backend, fullgraph=True)
    with torch.autocast(device, dtype=torch.bfloat16):
        got = compiled(gru, inputs.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), gru(inputs)[0], atol=3e-2, rtol=3e-2)
    got.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in gru.parameters())


def test_unsupported_gru_settings_are_refused_under_compile():
    gru = nn.GRU(4, 3, batch_first=False)
    with pytest.raises(Exception, match="batch_first"):
        torch.compile(run_gru, backend="eager", fullgraph=True)(gru, torch.randn(2, 3, 4))
