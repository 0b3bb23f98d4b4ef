"""Loss math shared by the models and the metrics: Lin's concordance correlation coefficient (CCC) and the
`1 - CCC` loss. Plain torch, no avemotion import (layer 0). The modeling files keep `# Copied from` copies of these
functions so that their remote code runs without avemotion; `tests/test_copies.py` keeps the copies equal."""

from __future__ import annotations

import torch


def concordance_correlation_coefficient(
    predictions: torch.Tensor, targets: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Lin's concordance correlation coefficient per column, with population (biased) variances.

    ``CCC = 2 cov(p, y) / (var(p) + var(y) + (mean(p) - mean(y))^2)``, as in VAVL's training code.

    Args:
        predictions: (N,) or (N, K).
        targets: same shape as ``predictions``.
        eps: added to the denominator so that constant inputs give 0 instead of NaN.

    Returns:
        (K,) tensor (a scalar tensor for 1-D inputs).
    """
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ in shape")
    predictions = predictions.float()
    targets = targets.float()
    mean_p, mean_y = predictions.mean(0), targets.mean(0)
    var_p = predictions.var(0, unbiased=False)
    var_y = targets.var(0, unbiased=False)
    covariance = ((predictions - mean_p) * (targets - mean_y)).mean(0)
    return 2 * covariance / (var_p + var_y + (mean_p - mean_y) ** 2 + eps)


def concordance_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over attributes of ``1 - CCC`` (VAVL's dimensional loss). predictions, targets: (N, K)."""
    return (1.0 - concordance_correlation_coefficient(predictions, targets)).sum()


__all__ = ["concordance_correlation_coefficient", "concordance_loss"]
