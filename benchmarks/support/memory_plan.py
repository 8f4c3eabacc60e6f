"""The per-process GPU memory docs/scale.md plans (scale_plan.py) and gpu_check.py measures against: one formula,
so the planned figure and the checked one cannot drift apart."""

from __future__ import annotations

# fp32 weights, gradients and AdamW's two moments: kept in fp32 under fp16 / bf16 autocast
OPTIMIZER_BYTES_PER_PARAM = 16


def stage1_training_bytes(trainable_params: int, saved_bytes_per_image: float, batch: int,
                          autocast: bool) -> float:
    """Optimizer state + the activations autograd keeps for a batch. ``saved_bytes_per_image`` is counted in fp32;
    under autocast most of them are stored in half precision, so about half of them."""
    activations = saved_bytes_per_image * batch
    return OPTIMIZER_BYTES_PER_PARAM * trainable_params + (activations / 2 if autocast else activations)


def extraction_bytes(params: int, peak_module_bytes_per_image: float, batch: int) -> float:
    """fp32 weights + the largest layer's input and output for the batch: the least a no-grad forward needs."""
    return 4 * params + peak_module_bytes_per_image * batch
