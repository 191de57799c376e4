"""The shared style of every figure (the figures themselves: ``collapse_jax/figures/``, by
topic; their render checks: ``collapse_jax/figures/check.py``).

Conventions shared by all figures:
  * each precision has one colour and one line style (``dtype_style``): float64 thick and
    solid underneath, the others thinner and broken on top, so curves that coincide stay
    visible;
  * a distance that is exactly 0 (a bitwise-equal pair) cannot sit on a log axis: it is
    drawn at a floor line at the bottom, with a '|' tick per equal n and a dot at the first
    one (``equal_ticks``);
  * log x axes label whole decades only (``log_x``), so tick labels never overlap.

The backend is left to matplotlib (it falls back to a headless one when there is no
display), so importing this module inside a notebook does not switch the user's backend.
Figures are closed after saving."""
from __future__ import annotations

import os
import textwrap

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from collapse_jax import metrics, precision


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


DTYPE_COLORS = {"float64": "black", "float32": "tab:blue", "float16": "tab:green",
                "bfloat16": "tab:orange", "bfloat16_pure": "tab:red",
                "float8_e4m3fn": "tab:purple", "float8_e5m2": "tab:brown"}
# Width, dash and z-order per dtype: float64/float32/float16 often coincide, so float64 is a
# thick solid line underneath, float32 dashed and float16 dotted on top of it.
DTYPE_STYLES = {"float64": {"ls": "-", "lw": 3.0, "zorder": 2},
                "float32": {"ls": "--", "lw": 1.8, "zorder": 3},
                "float16": {"ls": ":", "lw": 2.0, "zorder": 4},
                "bfloat16": {"ls": "-", "lw": 1.1, "zorder": 5},
                "bfloat16_pure": {"ls": "-.", "lw": 1.1, "zorder": 5},
                "float8_e4m3fn": {"ls": "-", "lw": 0.8, "zorder": 6},
                "float8_e5m2": {"ls": (0, (4, 1, 1, 1)), "lw": 0.8, "zorder": 6}}
REFERENCE_STYLE = {"color": "0.6", "ls": "-", "lw": 5.0, "alpha": 0.55, "zorder": 1}
LEVEL_STYLE = {"ls": (0, (1, 2)), "lw": 0.9}  # half-ulp levels, in the dtype's colour


def dtype_style(name: str) -> dict:
  """plot() keywords (color, ls, lw, zorder) of a precision preset; '_scaled' fp8 variants
  share their preset's style, unknown names get a thin solid line in the next colour."""
  base = name.removesuffix("_scaled")
  return {"color": DTYPE_COLORS.get(base), **DTYPE_STYLES.get(base, {"ls": "-", "lw": 1.0,
                                                                    "zorder": 5})}


def half_ulp(absmax, name: str) -> np.ndarray | None:
  """ulp(|y|)/2 in the storage dtype of preset ``name`` at magnitudes ``absmax`` [...]: two
  values closer than this round to the same stored number. None for an unknown preset."""
  base = name.removesuffix("_scaled")
  if base not in precision.PRESETS:
    return None
  return np.asarray(metrics.half_ulp(np.asarray(absmax, np.float64),
                                     precision.get_policy(base).storage_dtype), np.float64)


def log_x(ax) -> None:
  """Log x axis with few labels that never overlap; call it after plotting. A range of 30x
  or more is labelled at whole decades only (10^k); a shorter one, which may hold no decade
  at all, at 1-2-5 (or every integer multiple below 3x) in plain numbers. No minor labels."""
  ax.set_xscale("log")
  lo, hi = ax.get_xlim()
  if hi / lo >= 30:
    major = ticker.LogLocator(base=10, numticks=8)
    ax.xaxis.set_major_formatter(ticker.LogFormatterSciNotation(base=10))
  else:
    major = ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if hi / lo >= 3 else np.arange(1, 10))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.xaxis.set_major_locator(major)
  ax.xaxis.set_minor_locator(ticker.LogLocator(base=10, subs=np.arange(2, 10), numticks=12))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def equal_ticks(ax, n, equal, floor: float, color, *, ms: float = 8, onset=None) -> None:
  """Bitwise-equal n (``equal`` bool [S] over ``n`` [S]) as '|' ticks on the floor line
  at y = ``floor``, and the first one (``onset`` > 0, e.g. the collapse onset) as a dot."""
  n, equal = np.asarray(n), np.asarray(equal, bool)
  if equal.any():
    ax.plot(n[equal], np.full(equal.sum(), floor), "|", color=color, ms=ms, zorder=7)
  if onset is not None and onset > 0:
    ax.plot([onset], [floor], "o", color=color, ms=6, zorder=7)


def footer(fig, caption: str) -> None:
  fig.text(0.01, 0.005, "\n".join(textwrap.wrap(caption, 170)), fontsize=7, va="bottom")
