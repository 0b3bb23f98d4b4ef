"""Low-level utilities with no dependency on the rest of avemotion (models, processing and training build on them)."""

from .safe_pickle import (
    BUILTIN_GLOBALS,
    NUMPY_GLOBALS,
    PickleReadError,
    RestrictedUnpickler,
    UnsafePickleError,
    restricted_load,
)

__all__ = [
    "BUILTIN_GLOBALS",
    "NUMPY_GLOBALS",
    "PickleReadError",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "restricted_load",
]
