"""The task loss, shared by training and the gradient-based scorers (one definition, so a scorer's gradients
are the gradients training follows)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_loss(
    logits: torch.Tensor, labels: torch.Tensor, regression: bool, reduction: str = "mean"
) -> torch.Tensor:
    """MSE on the single output for regression, cross-entropy otherwise; in fp32 whatever the autocast dtype,
    since a bf16 log-softmax loses the small differences late in training."""
    if regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction=reduction)
    return F.cross_entropy(logits.float(), labels, reduction=reduction)
