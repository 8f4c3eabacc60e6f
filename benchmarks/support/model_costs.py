"""What a model costs at full size: FLOPs and activation memory of one forward pass, counted.

On the meta device a module has shapes but no storage, so a 1024-px ConvNeXt-S
forward pass is counted in a second on any laptop (models whose forward checks
tensor values, like the stage-2 fusion's mask checks, run on real CPU tensors
instead). Counted:

- forward FLOPs (torch's ``FlopCounterMode``: matmuls and convolutions, 2 per
  multiply-add). Training is taken as 3x forward (forward + backward); the
  counter's own backward count is wrong for grouped (depthwise) convolutions,
  which ConvNeXt is made of;
- activation memory of training: the bytes of every tensor autograd saves for
  the backward pass (``saved_tensors_hooks``), the module's own parameters
  (and views of them) left out; meta tensors have no storage to tell shared
  ones apart, so a tensor saved by two operations counts twice (an upper
  estimate);
- activation memory of inference: the largest input + output of any single
  module call, a lower bound on the working set of a ``no_grad`` forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class ForwardCost:
    flops: int  # forward FLOPs for the given input
    saved_bytes: int  # activations kept for backward (training), in the input's dtype
    peak_module_bytes: int  # largest input + output of one module call (inference working set, lower bound)


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(o) for o in obj.values())
    return 0


def forward_cost(module: torch.nn.Module, *inputs) -> ForwardCost:
    """FLOPs and activation bytes of ``module(*inputs)``, from one forward pass with autograd recording."""
    peak = [0]
    saved = [0]
    parameters = {id(p) for p in module.parameters()}

    def hook(_module, args, output):
        peak[0] = max(peak[0], _nbytes(args) + _nbytes(output))

    def pack(t: torch.Tensor):
        base = t._base if t._base is not None else t
        if id(base) not in parameters:
            saved[0] += t.numel() * t.element_size()
        return t

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return ForwardCost(flops=counter.get_total_flops(), saved_bytes=saved[0], peak_module_bytes=peak[0])


def parameter_count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
