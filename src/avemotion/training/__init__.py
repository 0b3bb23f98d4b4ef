"""Training utilities: losses, schedules and the Accelerate trainer."""

from .losses import concordance_correlation_coefficient, concordance_loss

__all__ = ["concordance_correlation_coefficient", "concordance_loss"]
