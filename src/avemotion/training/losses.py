"""Losses used by the trainer: a re-export of `avemotion.utils.losses`, where the CCC math lives (the models and the
metrics import it from there; this path stays for existing imports)."""

from avemotion.utils.losses import concordance_correlation_coefficient, concordance_loss

__all__ = ["concordance_correlation_coefficient", "concordance_loss"]
