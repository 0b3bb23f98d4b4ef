"""Figures of the package's results, drawn with matplotlib (optional: `pip install 'avemotion[plot]'`), imported only
when a figure is drawn. Every function returns a `matplotlib.figure.Figure` that belongs to no pyplot window (no
global state, no display needed); `save_figure` writes it.

- `plot_timeline`: the pipeline's result for one input along time, with the modalities used per window;
- `plot_confusion_matrix`, `plot_regression_scatter`, `write_evaluation_figures`: evaluation figures;
- `plot_training_curves`: losses and the selection metric per epoch from `training_log.jsonl`.

Layer 0 of the package: imports nothing from avemotion but `avemotion.utils`.
"""

from ._figures import INSTALL_HINT, require_matplotlib, save_figure
from .evaluation import (
    concordance_correlation,
    plot_confusion_matrix,
    plot_regression_scatter,
    write_evaluation_figures,
)
from .timeline import TimelineWindow, plot_timeline, timeline_windows, window_regions
from .training import metric_of, plot_training_curves, read_training_log

__all__ = [
    "INSTALL_HINT",
    "TimelineWindow",
    "concordance_correlation",
    "metric_of",
    "plot_confusion_matrix",
    "plot_regression_scatter",
    "plot_timeline",
    "plot_training_curves",
    "read_training_log",
    "require_matplotlib",
    "save_figure",
    "timeline_windows",
    "window_regions",
    "write_evaluation_figures",
]
