"""Emotion timelines: the `audio-visual-emotion` pipeline's result for one input drawn along time, with a band that
shows which modalities each window used (e.g. audio only where no face was found)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._figures import MODALITY_COLOURS, class_colours, modality_key, new_figure

_WINDOW_KEYS = frozenset({"start", "end", "modalities", "notes", "predictions", "windows"})


@dataclass
class TimelineWindow:
    """One analysis window: `[start, end)` seconds, its values (label -> probability, or attribute -> value on the
    model's scale) and the modalities it used."""

    start: float
    end: float
    values: dict[str, float]
    modalities: list[str]


def _categorical(predictions: Any, name: str) -> dict[str, float]:
    if not isinstance(predictions, list) or not predictions:
        raise ValueError(f"{name}: expected a non-empty list of {{'label', 'score'}} predictions, got {predictions!r}")
    try:
        return {str(p["label"]): float(p["score"]) for p in predictions}
    except (TypeError, KeyError) as error:
        raise ValueError(f"{name}: each prediction needs a 'label' and a 'score' ({error!r})") from error


def _dimensional(values: Mapping[str, Any], name: str) -> dict[str, float]:
    found = {str(k): float(v) for k, v in values.items() if k not in _WINDOW_KEYS and isinstance(v, (int, float))}
    if not found:
        raise ValueError(f"{name}: expected attribute values (e.g. 'arousal': 3.1), found keys {sorted(values)}")
    return found


def timeline_windows(result: Any, duration: float | None = None) -> tuple[str, list[TimelineWindow]]:
    """The windows of a pipeline result for one input, and its kind (`"categorical"` or `"dimensional"`).

    A result without windows (a short clip) is one window `[0, duration)` (`[0, 1)` when the duration is unknown).
    Raises `ValueError` for an error result (`{"error", "input"}`) or anything that is not a pipeline result."""
    if isinstance(result, Mapping) and "error" in result:
        raise ValueError(f"result: the input failed ({result['error']}); there is nothing to plot")
    end = float(duration) if duration else 1.0
    if isinstance(result, list):
        modalities = list(result[0].get("modalities", [])) if result and isinstance(result[0], Mapping) else []
        return "categorical", [TimelineWindow(0.0, end, _categorical(result, "result"), modalities)]
    if not isinstance(result, Mapping):
        raise ValueError(f"result: expected the pipeline's result for one input (a list or dict), got {type(result)}")
    if "windows" not in result:
        values = _dimensional(result, "result")
        return "dimensional", [TimelineWindow(0.0, end, values, list(result.get("modalities", [])))]
    raw = result["windows"]
    if not isinstance(raw, list) or not raw:
        raise ValueError("result['windows']: expected a non-empty list of windows")
    kind = "categorical" if "predictions" in raw[0] else "dimensional"
    windows = []
    for index, window in enumerate(raw):
        name = f"result['windows'][{index}]"
        if not isinstance(window, Mapping) or "start" not in window or "end" not in window:
            raise ValueError(f"{name}: expected a dict with 'start' and 'end' seconds")
        values = _categorical(window.get("predictions"), name) if kind == "categorical" else _dimensional(window, name)
        windows.append(TimelineWindow(float(window["start"]), float(window["end"]), values,
                                      list(window.get("modalities", []))))  # fmt: skip
    return kind, windows


def window_regions(windows: Sequence[TimelineWindow]) -> tuple[np.ndarray, np.ndarray]:
    """`(lefts, rights)` (W,): the stretch of time each window is drawn over. Windows that overlap (a stride shorter
    than the window, or the tail window aligned to the end of the media) share their overlap at the midpoint between
    their centres; a gap between windows stays empty."""
    starts = np.array([w.start for w in windows], dtype=np.float64)
    ends = np.array([w.end for w in windows], dtype=np.float64)
    lefts, rights = starts.copy(), ends.copy()
    for i in range(1, len(windows)):
        if starts[i] < ends[i - 1]:  # overlap: split at the midpoint between the centres
            middle = (starts[i - 1] + ends[i - 1] + starts[i] + ends[i]) / 4
            rights[i - 1] = lefts[i] = min(max(middle, starts[i]), ends[i - 1])
    return lefts, rights


def _ordered_names(windows: Sequence[TimelineWindow], labels: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(name for w in windows for name in w.values))
    if labels is not None:
        return [str(n) for n in labels if str(n) in present] + [n for n in present if n not in set(map(str, labels))]
    means = {name: np.mean([w.values.get(name, 0.0) for w in windows]) for name in present}
    return sorted(present, key=lambda name: -means[name])


def _weighted_mean(windows: Sequence[TimelineWindow], values: np.ndarray) -> np.ndarray:
    weights = np.array([max(w.end - w.start, 1e-6) for w in windows])
    return (values * weights[:, None]).sum(0) / weights.sum()


def _draw_probabilities(ax: Any, windows, lefts, rights, labels) -> None:
    names = _ordered_names(windows, labels)
    probabilities = np.array([[w.values.get(name, 0.0) for name in names] for w in windows])  # (W, C)
    other = np.clip(1.0 - probabilities.sum(1), 0.0, 1.0)
    colours = class_colours(len(names))
    if other.max() > 1e-3:  # a result cut to its top_k labels: the rest in grey
        names, colours = [*names, "other"], [*colours, (0.8, 0.8, 0.8, 1.0)]
        probabilities = np.concatenate([probabilities, other[:, None]], axis=1)
    means = _weighted_mean(windows, probabilities)
    bottom = np.zeros(len(windows))
    for index, name in enumerate(names):
        ax.bar(lefts, probabilities[:, index], rights - lefts, bottom=bottom, align="edge", color=colours[index],
               label=f"{name} ({means[index]:.2f})", linewidth=0)  # fmt: skip
        bottom += probabilities[:, index]
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="label (mean)")


def _draw_attributes(ax: Any, windows, lefts, rights, labels, scale) -> None:
    names = _ordered_names(windows, labels) if labels is not None else list(windows[0].values)
    values = np.array([[w.values.get(name, np.nan) for name in names] for w in windows])  # (W, K)
    means = _weighted_mean(windows, np.nan_to_num(values))
    xs, rows = [], []
    for index in range(len(windows)):  # a flat segment per window, broken (NaN) where windows leave a gap
        if index and lefts[index] > rights[index - 1] + 1e-9:
            xs.append(np.nan)
            rows.append(np.full(len(names), np.nan))
        xs += [lefts[index], rights[index]]
        rows += [values[index], values[index]]
    lines = np.array(rows)
    for index, (name, colour) in enumerate(zip(names, class_colours(len(names)))):
        ax.plot(xs, lines[:, index], color=colour, linewidth=2.2, label=f"{name} ({means[index]:.2f})")
    if scale is not None:
        low, high = float(scale[0]), float(scale[1])
        pad = 0.03 * (high - low)
        ax.set_ylim(low - pad, high + pad)
        ax.set_ylabel(f"value (scale {low:g} to {high:g})")
    else:
        ax.set_ylabel("value")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="attribute (mean)")


def _draw_modality_band(band: Any, windows, lefts, rights) -> None:
    from matplotlib.colors import to_rgb

    shown: dict[str, Any] = {}
    span = max(float(rights.max() - min(lefts.min(), 0.0)), 1e-9)
    for window, left, right in zip(windows, lefts, rights):
        key = modality_key(window.modalities)
        colour = MODALITY_COLOURS.get(key, "#9a9a9a")
        (patch,) = band.barh(0, right - left, left=left, height=1.0, color=colour, edgecolor="white", linewidth=0.8)
        patch.set_gid(key)
        shown.setdefault(key, patch)
        if (right - left) / span >= 0.012 * (len(key) + 2):  # the combination's name fits on the bar
            red, green, blue = to_rgb(colour)
            ink = "white" if 0.3 * red + 0.59 * green + 0.11 * blue < 0.5 else "black"
            band.text((left + right) / 2, 0, key, ha="center", va="center", fontsize="x-small", color=ink)
    band.set_ylim(-0.5, 0.5)
    band.set_yticks([])
    band.set_ylabel("inputs", rotation=0, ha="right", va="center")
    band.legend(shown.values(), shown.keys(), loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="x-small",
                ncols=min(len(shown), 2), frameon=False)  # fmt: skip


def plot_timeline(
    result: Any,
    *,
    duration: float | None = None,
    scale: Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    width: float = 10.0,
):
    """Draw the `audio-visual-emotion` pipeline's result for one input along time.

    Categorical models: the class probabilities of each window as stacked bars (one bar for a short clip);
    dimensional models: one line per attribute on the model's scale. Below, a band coloured by the modalities each
    window used (`audio+video`, `audio` where no face was found, ...). The legend gives each label's duration-weighted
    mean. Time is in seconds, from 0 to the end of the last window (or `duration`).

    Args:
        result: the pipeline's output for one input: a list of `{"label", "score", "modalities"}`, a dict of attribute
            values, or a dict with `"windows"` (`[{"start", "end", ...}]`).
        duration: the media's length in seconds (the x-axis end; for a result without windows, the bar's length).
        scale: `(low, high)` of a dimensional model (`config.label_scale`), for the y-axis.
        labels: the class or attribute order (e.g. `config.id2label` in id order), for stable colours.
        title: the figure's title (e.g. the file name).

    Returns:
        a `matplotlib.figure.Figure` with two axes: `"emotions"` (the values) and `"modalities"` (the band; each bar's
        gid is its modality combination, e.g. `"audio+video"`).
    """
    kind, windows = timeline_windows(result, duration)
    lefts, rights = window_regions(windows)
    figure = new_figure(width, 4.2)
    grid = figure.add_gridspec(2, 1, height_ratios=[7, 1])
    ax = figure.add_subplot(grid[0], label="emotions")
    band = figure.add_subplot(grid[1], sharex=ax, label="modalities")
    if kind == "categorical":
        _draw_probabilities(ax, windows, lefts, rights, labels)
    else:
        _draw_attributes(ax, windows, lefts, rights, labels, scale)
    _draw_modality_band(band, windows, lefts, rights)
    end = float(duration) if duration else float(rights.max())
    ax.set_xlim(min(0.0, float(lefts.min())), end)
    ax.tick_params(labelbottom=False)
    ax.grid(axis="y", alpha=0.3)
    if len(windows) == 1 and not duration and "windows" not in result:
        band.set_xticks([])
        band.set_xlabel("whole input (duration unknown)")
    else:
        band.set_xlabel("time (s)")
    ax.set_title(title or f"Emotion timeline ({len(windows)} window{'s' if len(windows) > 1 else ''})")
    return figure
