"""The matplotlib plumbing shared by the figures: a lazy import with a clear error, `Figure` objects built without
pyplot (no global state, no display: the Agg renderer draws them), and saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'avemotion[plot]'"
# one shade per modality combination of the modality band (audio+video, audio only, ...): greys and muted tones that
# the class colours (tab10) do not use, with the combination written on the bar where it fits
MODALITY_ORDER = ("audio", "video", "text")
MODALITY_COLOURS = {
    "audio+video": "#3a3a3a",
    "audio": "#c8c8c8",
    "video": "#7a7a7a",
    "text": "#d9cfae",
    "audio+text": "#a39e8a",
    "video+text": "#6e6a5a",
    "audio+video+text": "#2b2a24",
}


def require_matplotlib() -> Any:
    """The `matplotlib` module; an `ImportError` saying how to install it when it is missing."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(f"avemotion's figures need matplotlib, which is not installed: {INSTALL_HINT}") from error
    return matplotlib


def new_figure(width: float, height: float, **kwargs: Any):
    """A `matplotlib.figure.Figure` (constrained layout) that belongs to no pyplot window."""
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained", **kwargs)


def save_figure(figure: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write `figure` to `path` (format from the suffix: .png, .svg, .pdf; none: PNG with `.png` added), creating
    the parent folders. Returns the path written."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path


def modality_key(modalities: Any) -> str:
    """`["video", "audio"]` -> `"audio+video"` (the band's category); nothing -> `"none"`."""
    names = [str(m) for m in modalities or ()]
    ordered = [m for m in MODALITY_ORDER if m in names] + sorted(set(names) - set(MODALITY_ORDER))
    return "+".join(ordered) or "none"


def class_colours(count: int) -> list:
    """`count` distinct colours (tab10, then tab20, then a sampled continuous map)."""
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["turbo"](i / max(count - 1, 1)) for i in range(count)]
