"""PNG plots: TAD variation curves and keyframe contact sheets (more plots join later).

Small functions, one picture each. They draw on matplotlib `Figure` objects with the Agg
canvas directly, so they never touch pyplot's global state or need a display.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np


def _save(fig: Figure, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  FigureCanvasAgg(fig)
  fig.savefig(path, format="png")
  return path


def tad_curve(
  path: str | os.PathLike,
  scores_t: np.ndarray,
  inflections_t: np.ndarray | None = None,
  selected_k: Sequence[int] | None = None,
  timestamps_t: np.ndarray | None = None,
  *,
  title: str | None = None,
  cuts: Sequence[int] | None = None,
) -> str:
  """Plots the variation curve with inflections and selected keyframes marked.

  Args:
    path: output PNG.
    scores_t: variation score per frame [T].
    inflections_t: bool [T], frames drawn as inflection markers.
    selected_k: frame indices of the selected keyframes (vertical lines).
    timestamps_t: seconds per frame [T]; the x axis is frames when omitted.
    title: figure title.
    cuts: known scene-cut frames (ground truth), drawn as dotted lines when given.

  Returns:
    The path written.
  """
  scores_t = np.asarray(scores_t, np.float64)
  t = scores_t.shape[0]
  x_t = np.arange(t) if timestamps_t is None else np.asarray(timestamps_t, np.float64)
  fig = Figure(figsize=(10, 3.2), dpi=100, layout="constrained")
  ax = fig.add_subplot()
  ax.plot(x_t, scores_t, color="tab:blue", lw=1.2, label="variation $v_t$")
  if cuts is not None and len(cuts):
    for i, c in enumerate(cuts):
      ax.axvline(x_t[int(c)], color="0.5", ls=":", lw=1, label="scene cut" if i == 0 else None)
  if selected_k is not None and len(selected_k):
    for i, s in enumerate(np.asarray(selected_k, int)):
      ax.axvline(x_t[s], color="tab:green", alpha=0.35, lw=2, label="selected" if i == 0 else None)
  if inflections_t is not None:
    where_t = np.flatnonzero(np.asarray(inflections_t, bool))
    ax.plot(x_t[where_t], scores_t[where_t], "v", color="tab:red", ms=7, label="inflection")
  ax.set_xlabel("frame" if timestamps_t is None else "time (s)")
  ax.set_ylabel("variation")
  ax.set_xlim(x_t[0] if t else 0, x_t[-1] if t else 1)
  ax.legend(loc="upper right", fontsize=8)
  ax.grid(alpha=0.3)
  if title:
    ax.set_title(title)
  return _save(fig, path)


def contact_sheet(
  path: str | os.PathLike,
  frames_khwc: np.ndarray,
  labels: Sequence[str] | None = None,
  *,
  cols: int | None = None,
  title: str | None = None,
  tile_inches: float = 1.8,
) -> str:
  """Tiles frames into one PNG, a caption under each (e.g. frame index and time).

  Args:
    path: output PNG.
    frames_khwc: uint8 frames [K, H, W, 3].
    labels: one caption per frame.
    cols: tiles per row; default about sqrt(K) * 1.5 for a landscape sheet.
    title: figure title.
    tile_inches: size of one tile.

  Returns:
    The path written.
  """
  frames_khwc = np.asarray(frames_khwc)
  if frames_khwc.ndim != 4 or frames_khwc.shape[-1] != 3:
    raise ValueError(f"frames must be [K, H, W, 3], got {frames_khwc.shape}")
  k = frames_khwc.shape[0]
  if labels is not None and len(labels) != k:
    raise ValueError(f"got {len(labels)} labels for {k} frames")
  cols = cols or max(1, min(k, math.ceil(math.sqrt(max(k, 1)) * 1.5)))
  rows = max(1, math.ceil(k / cols))
  aspect = frames_khwc.shape[1] / frames_khwc.shape[2] if k else 1.0
  fig = Figure(
    figsize=(cols * tile_inches, rows * tile_inches * aspect + 0.4 * rows),
    dpi=100,
    layout="constrained",
  )
  axes = fig.subplots(rows, cols, squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.set_axis_off()
    if i < k:
      ax.imshow(frames_khwc[i], interpolation="nearest")
      if labels is not None:
        ax.set_title(labels[i], fontsize=8)
  if title:
    fig.suptitle(title)
  return _save(fig, path)
