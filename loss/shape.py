"""Shape prior of PRSD: SMPL betas are pulled towards a fixed mean shape."""
from __future__ import annotations

import torch


def shape_prior_loss(betas: torch.Tensor, prior_mean: torch.Tensor) -> torch.Tensor:
    """MSE(betas, μ) averaged over every element; betas (..., 10), prior_mean (10,)."""
    if betas.shape[-1] != prior_mean.shape[-1]:
        raise ValueError(
            f"betas have {betas.shape[-1]} shape coefficients but LOSS.SHAPE_PRIOR_MEAN has {prior_mean.shape[-1]}"
        )
    return (betas.float() - prior_mean.to(betas.device, torch.float32)).pow(2).mean()
