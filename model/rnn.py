"""GRUs that stay one op under torch.compile.

Traced by torch.compile, ``nn.GRU`` is decomposed into its time steps (a matmul and the gate
arithmetic per step, layer and direction, forward and backward): PRSD's two 2-layer GRUs at 8 frames
become about 60% of the heads' training graph, which the compiler then traces, partitions and
generates code for, at 16 frames in evaluation twice that. :func:`run_gru` keeps the GRU one opaque
op in a compiled graph (``sas::gru``, its backward ``sas::gru_backward``) that runs the same kernel
as eager mode (cuDNN on CUDA), in the dtype of its input (see :func:`run_gru`). Outside torch.compile
it is the module call itself.
"""
from __future__ import annotations

import warnings
from typing import List

import torch
from torch import Tensor, nn

# The weights reach cuDNN cast per call, so never as one flat buffer: it packs them on each call (they
# are small) and says so in a warning that would otherwise repeat in every training log.
warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk",
                        category=UserWarning, module=__name__)


def _gru_kernel(inputs: Tensor, weights: List[Tensor], num_layers: int, train: bool) -> Tensor:
    """The GRU kernel of nn.GRU (batch_first, biases, zero initial state, no dropout, one direction).
    ``train``: keep what a backward needs (cuDNN differentiates only a training-mode call)."""
    hidden = weights[1].shape[1]  # weight_hh_l0: (3 * hidden, hidden)
    state = inputs.new_zeros(num_layers, inputs.shape[0], hidden)
    # The caller chose the dtype; CUDA autocast would run cuDNN's RNN in fp16 whatever it is.
    with torch.autocast(inputs.device.type, enabled=False):
        output, _ = torch._VF.gru(inputs, state, weights, True, num_layers, 0.0, train, False, True)
    return output


@torch.library.custom_op("sas::gru", mutates_args=())
def gru_op(inputs: Tensor, weights: List[Tensor], num_layers: int) -> Tensor:
    """inputs (B, T, F), weights as nn.GRU's ``_flat_weights`` (all of one dtype) -> output (B, T, H),
    contiguous as its fake (the kernel's batch_first output may be a transposed view)."""
    return _gru_kernel(inputs, weights, num_layers, train=False).contiguous()


@gru_op.register_fake
def _(inputs, weights, num_layers):
    return inputs.new_empty(inputs.shape[0], inputs.shape[1], weights[1].shape[1])


@torch.library.custom_op("sas::gru_backward", mutates_args=())
def gru_backward_op(grad_output: Tensor, inputs: Tensor, weights: List[Tensor], num_layers: int) -> List[Tensor]:
    """Gradients of :func:`gru_op` w.r.t. [inputs, *weights]: the forward is recomputed with autograd
    (one more GRU forward, small beside its backward), so no hidden state is kept between the two."""
    # A custom op's body runs below autograd (its dispatch key excluded): let autograd record again.
    include = torch._C._dispatch_tls_local_include_set()
    exclude = torch._C._dispatch_tls_local_exclude_set().remove(torch._C.DispatchKey.AutogradFunctionality)
    with torch._C._ForceDispatchKeyGuard(include, exclude), torch.enable_grad():
        leaves = [inputs.detach().requires_grad_(), *(w.detach().requires_grad_() for w in weights)]
        output = _gru_kernel(leaves[0], leaves[1:], num_layers, train=True)
        grads = torch.autograd.grad(output, leaves, grad_output)
    # Copies: cuDNN returns the weight gradients as views of one flat buffer, and a custom op's
    # outputs may not alias each other.
    return [grad.clone(memory_format=torch.contiguous_format) for grad in grads]


@gru_backward_op.register_fake
def _(grad_output, inputs, weights, num_layers):
    return [torch.empty_like(inputs), *(torch.empty_like(w) for w in weights)]


def _setup_context(ctx, inputs, output):
    gru_inputs, weights, num_layers = inputs
    ctx.save_for_backward(gru_inputs, *weights)
    ctx.num_layers = num_layers


def _backward(ctx, grad_output):
    gru_inputs, *weights = ctx.saved_tensors
    grads = gru_backward_op(grad_output.contiguous(), gru_inputs, weights, ctx.num_layers)
    return grads[0], grads[1:], None


gru_op.register_autograd(_backward, setup_context=_setup_context)


def run_gru(gru: nn.GRU, inputs: Tensor) -> Tensor:
    """inputs (B, T, F) -> output (B, T, H) of a batch_first, one-direction ``gru`` from a zero state.

    Under torch.compile the GRU is the opaque op ``sas::gru``, run in the dtype of ``inputs`` (under
    autocast: the dtype the layer before it produced, bf16 with SOLVER.AMP bf16, where eager CUDA
    autocast runs cuDNN's RNN in fp16); otherwise ``gru(inputs)`` itself. The weights, cast per call,
    are not one flat buffer, so cuDNN packs them on each call (its warning is silenced); they are
    small. Dynamo touches a GRU module only with ``torch._dynamo.config.allow_rnn`` (set by
    :func:`model.build.compile_options`).
    """
    if not torch.compiler.is_compiling():
        return gru(inputs)[0]
    if not gru.batch_first or gru.bidirectional or not gru.bias or gru.proj_size or (gru.dropout and gru.training):
        raise ValueError("run_gru supports batch_first, one-direction GRUs with biases, no projection and no dropout")
    weights = [w.to(inputs.dtype) for w in gru._flat_weights]
    return gru_op(inputs.contiguous(), weights, gru.num_layers)
