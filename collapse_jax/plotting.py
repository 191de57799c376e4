"""matplotlib figures shared by the experiments (headless Agg backend)."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def subplots(nrows=1, ncols=1, **kw):
  kw.setdefault("figsize", (6.4 * ncols, 4.4 * nrows))
  kw.setdefault("squeeze", False)
  return plt.subplots(nrows, ncols, **kw)


def save(fig, path: str) -> str:
  """Tight layout, write atomically (temp + rename), close. Returns path."""
  fig.tight_layout()
  tmp = os.path.join(os.path.dirname(os.path.abspath(path)), "." + os.path.basename(path) + ".tmp.png")
  fig.savefig(tmp, dpi=130)
  os.replace(tmp, path)
  plt.close(fig)
  return path


def positive_for_log(y, floor=None):
  """Values for a log axis: zeros (bitwise-equal pairs) are drawn at ``floor`` (default:
  half the smallest positive value) so that collapse shows as a drop to the floor."""
  y = np.asarray(y, np.float64)
  pos = y[np.isfinite(y) & (y > 0)]
  if floor is None:
    floor = pos.min() / 2 if pos.size else 1e-30
  return np.where(y > 0, y, floor), floor
