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

import textwrap

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg

from collapse_jax import metrics, precision, results

DPI = 130


def subplots(nrows=1, ncols=1, **kw):
  kw.setdefault("figsize", (6.4 * ncols, 4.4 * nrows))
  kw.setdefault("squeeze", False)
  return plt.subplots(nrows, ncols, **kw)


def save(fig, path: str | None):
  """Tight layout between the title (:func:`suptitle`) and the footer (:func:`footer`), if
  any; then with a ``path``, write the PNG atomically, close the figure and return
  ``path``. ``path`` None returns the laid-out Figure itself, open and unsaved, for the render
  checks (``collapse_jax/figures/check.py``) or :func:`write`."""
  H, r = fig.bbox.height, renderer(fig)
  bottom = max([(t.get_window_extent(r).y1 + 4) / H for t in fig.texts
                if t.get_gid() == "footer"], default=0.0)
  top = min([(t.get_window_extent(r).y0 - 4) / H for t in fig.findobj(
      lambda a: a.get_gid() == "suptitle")], default=1.0)
  fig.tight_layout(rect=(0, bottom, 1, top))
  return fig if path is None else write(fig, path)


def write(fig, path: str) -> str:
  """Write ``fig`` as a PNG at ``path`` atomically (``results.atomic_open``), close it and
  return ``path``."""
  with results.atomic_open(path, "wb") as f:
    fig.savefig(f, dpi=DPI, format="png")
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


# Tick multiples a log axis tries, sparsest first: whole decades, then 1-3, 1-2-5, 1-2-3-5
# and every integer multiple of each decade.
LOG_SUBS = ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0), tuple(range(1, 10)))
LOG_COVER = {"x": 0.8, "y": 0.5}  # the last label at or beyond this fraction of the view
MAX_LOG_LABELS = 12


def _log_label(v: float, decades: bool) -> str:
  """A log tick's label: plain (3, 0.6, 2000) for 1e-3 <= v < 1e4 unless the axis is labelled
  at whole decades only; else 10^k, or a x 10^k off a decade."""
  if not v > 0:
    return ""
  if not decades and 1e-3 <= v < 1e4:
    return f"{v:g}"
  e = int(np.floor(np.log10(v) + 1e-9))
  m = v / 10.0 ** e
  return (f"$\\mathdefault{{10^{{{e}}}}}$" if abs(m - 1) < 1e-9
          else f"$\\mathdefault{{{m:g}\\times10^{{{e}}}}}$")


def _log_axis(axis, lo: float, hi: float, cover: float) -> None:
  """Label a log ``axis`` with view limits (lo, hi) at the sparsest multiples (:data:`LOG_SUBS`)
  that give 2..MAX_LOG_LABELS labels, the last at or beyond ``cover`` of the view (log scale),
  so the labels reach the data's end; no minor labels."""
  span = np.log10(hi) - np.log10(lo)
  locs, subs = [], LOG_SUBS[0]
  for subs in LOG_SUBS:
    if subs == (1.0,):  # many decades: LogLocator strides them
      cand = ticker.LogLocator(base=10, numticks=8).tick_values(lo, hi)
    else:
      ks = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
      cand = [m * 10.0 ** k for k in ks for m in subs]
    locs = [float(v) for v in cand if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
    if 2 <= len(locs) <= MAX_LOG_LABELS and (np.log10(locs[-1]) - np.log10(lo)) / span >= cover:
      break
  decades = subs == (1.0,)
  axis.set_major_locator(ticker.FixedLocator(locs))
  axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _log_label(v, decades)))
  axis.set_minor_locator(ticker.LogLocator(base=10, subs=np.arange(2, 10), numticks=12))
  axis.set_minor_formatter(ticker.NullFormatter())


def log_x(ax) -> None:
  """Log x axis whose labels reach the end of the data and never overlap (:func:`_log_axis`:
  whole decades 10^k where they do, else 1-3, 1-2-5, ... multiples in plain numbers); call it
  after plotting and after setting the x limits."""
  ax.set_xscale("log")
  _log_axis(ax.xaxis, *sorted(ax.get_xlim()), LOG_COVER["x"])


def log_y(ax) -> None:
  """:func:`log_x` for the y axis (its labels need reach only half way up): never "3 x 10^0"
  where 3 reads better."""
  ax.set_yscale("log")
  _log_axis(ax.yaxis, *sorted(ax.get_ylim()), LOG_COVER["y"])


def equal_ticks(ax, n, equal, floor: float, color, *, ms: float = 8, onset=None,
                key: str | None = None) -> None:
  """Bitwise-equal n (``equal`` bool [S] over ``n`` [S]) as '|' ticks on the floor line
  at y = ``floor``, and the first one (``onset`` > 0, e.g. the collapse onset) as a dot. The
  ticks are the series 'equal <key>' (default: the colour) and the dot its marks
  (``figures.check.marks_on_series``): an onset that is not an equal n fails the check."""
  n, equal = np.asarray(n), np.asarray(equal, bool)
  key = f"equal {color if key is None else key}"
  if equal.any():
    ax.plot(n[equal], np.full(equal.sum(), floor), "|", color=color, ms=ms, zorder=7,
            gid=f"series:{key}")
  if onset is not None and onset > 0:
    ax.plot([onset], [floor], "o", color=color, ms=6, zorder=7, gid=f"marks:{key}")


FOOTER_PT = 7


def renderer(fig):
  """The figure's renderer (an Agg one when its canvas has none) to measure text with."""
  canvas = fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)
  return canvas.get_renderer()


def wrap(fig, text, *, fontsize: float, width: float = 0.98) -> str:
  """``text`` wrapped (textwrap) to lines no wider than ``width`` of the canvas at
  ``fontsize``, measured with the figure's renderer; its own line breaks are kept."""
  probe = fig.text(0, 0, text.replace("\n", " "), fontsize=fontsize)
  per_char = probe.get_window_extent(renderer(fig)).width / max(len(probe.get_text()), 1)
  probe.remove()
  chars = max(20, int(width * fig.bbox.width / per_char * 0.97))
  return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def footer(fig, caption: str) -> None:
  """``caption`` as the figure's footer (gid 'footer'): along the bottom edge, wrapped to the
  canvas width; :func:`save` lays the panels out above it."""
  fig.text(0.01, 0.005, wrap(fig, caption, fontsize=FOOTER_PT), fontsize=FOOTER_PT,
           va="bottom", gid="footer")


def suptitle(fig, title: str, fontsize: float = 10) -> None:
  """``title`` above every panel, wrapped to the canvas width; :func:`save` lays the panels
  out below it."""
  fig.suptitle(wrap(fig, title, fontsize=fontsize), fontsize=fontsize, gid="suptitle")
