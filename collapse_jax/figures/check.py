"""Render checks: what a reader trusts at a glance, asserted on a drawn matplotlib Figure.

Each check takes a Figure (drawn here on the Agg canvas; ``drawn``: a :func:`drawn_texts`
result to reuse) and returns its problems, one line each, naming the artists:

  ``inside_canvas``      every drawn text (titles, axis and tick labels, legend texts,
                         footers, annotations) lies inside the canvas;
  ``no_overlaps``        no two drawn texts overlap (rotated texts as rotated boxes);
  ``x_ticks_cover``      on every panel with data, a labelled x tick sits at or beyond 80% of
                         the plotted data's x range (on the axis' own scale: log for log);
  ``marks_on_series``    every annotating marker sits on a data point of its series;
  ``plain_log_labels``   no log-axis tick label reads "a x 10^b" where a plain number reads
                         better (10^-3 <= value < 10^4, e.g. 3 rather than 3 x 10^0).

The marker convention: a figure declares a series with ``gid='series:<key>'`` on its Line2D(s)
and the markers that annotate it with ``gid='marks:<key>'`` (a Line2D in the same panel);
every marker point must equal a point (x, y) of a line of that series
(``plotting.equal_ticks`` declares its onset dot so).

``problems(fig)`` runs them all; ``check(fig)`` raises :class:`RenderError` with every problem.
"""
from __future__ import annotations

import re

import numpy as np
from matplotlib import image, lines, text as mtext
from matplotlib.backends.backend_agg import FigureCanvasAgg

TOL_PX = 1.0  # texts may touch the canvas edge or each other by this much
COVER = 0.8  # x_ticks_cover: the last labelled tick at or beyond this fraction of the range
SCI = re.compile(r"(?:\\times|\u00d7)\s*\{?\s*10\^\{?\s*([-\u2212]?\d+)")


class RenderError(AssertionError):
  """A figure failed one or more render checks (one line per problem)."""


def drawn_texts(fig) -> tuple[list, object]:
  """Draw ``fig`` on an Agg canvas; returns (the Text artists that drew themselves, with
  non-empty text, in drawing order; the renderer). Text.draw is watched for the one draw (the
  renderer's draw_text does not name the artist of a multi-line text)."""
  canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
  renderer = canvas.get_renderer()
  seen: dict = {}
  draw = mtext.Text.draw

  def spy(self, r, *args, **kwargs):
    if r is renderer and self.get_visible() and self.get_text().strip():
      seen.setdefault(id(self), self)
    return draw(self, r, *args, **kwargs)

  mtext.Text.draw = spy
  try:
    fig.draw(renderer)
  finally:
    mtext.Text.draw = draw
  return list(seen.values()), renderer


def _panel(ax, i: int) -> str:
  return f"panel {ax.get_title()!r}" if ax.get_title() else f"panel {i}"


def _roles(fig) -> dict:
  """id(Text) -> its role, e.g. "x tick label of panel 'H=1'"."""
  roles = {}
  for i, ax in enumerate(fig.axes):
    p = _panel(ax, i)
    roles[id(ax.title)] = f"title of {p}"
    for xy, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
      roles[id(axis.label)] = f"{xy} label of {p}"
      roles[id(axis.get_offset_text())] = f"{xy} offset text of {p}"
      for t in axis.get_ticklabels(which="both"):
        roles[id(t)] = f"{xy} tick label of {p}"
    legend = ax.get_legend()
    if legend is not None:
      roles.update({id(t): f"legend entry of {p}" for t in legend.get_texts()})
      roles[id(legend.get_title())] = f"legend title of {p}"
    roles.update({id(t): f"text in {p}" for t in ax.texts})
  for t in fig.texts:
    roles[id(t)] = "footer" if t.get_gid() == "footer" else "figure text"
  for t in fig.findobj(mtext.Text):
    if id(t) not in roles and t.get_text() and t.get_text() == fig.get_suptitle():
      roles[id(t)] = "suptitle"
  return roles


def readable(label: str) -> str:
  """A label as it reads on the canvas: '$\\mathdefault{3\\times10^{0}}$' -> '3×10^0'."""
  s = label.replace("\\mathdefault", "").replace("\\times", "\u00d7").replace("\u2212", "-")
  return re.sub(r"[${}]", "", s) if "$" in s else s


def _describe(t, roles) -> str:
  s = " ".join(readable(t.get_text()).split())
  return f"{roles.get(id(t), type(t).__name__)} {s[:48] + '...' if len(s) > 51 else s!r}"


def inside_canvas(fig, drawn=None) -> list[str]:
  texts, renderer = drawn or drawn_texts(fig)
  roles, out = _roles(fig), []
  W, H = fig.bbox.width, fig.bbox.height
  for t in texts:
    b = t.get_window_extent(renderer)
    for side, px in (("left", -b.x0), ("right", b.x1 - W), ("bottom", -b.y0), ("top", b.y1 - H)):
      if px > TOL_PX:
        out.append(f"{_describe(t, roles)} sticks out of the canvas at the {side} by {px:.0f} px")
  return out


def _quad(t, renderer) -> np.ndarray:
  """The text's box as 4 corners [4, 2] in pixels: its window extent, or for a text rotated
  by other than 0/90 degrees the rotated rectangle (same centre) of its unrotated size."""
  b = t.get_window_extent(renderer)
  angle = t.get_rotation() % 180
  corners = np.array([[b.x0, b.y0], [b.x1, b.y0], [b.x1, b.y1], [b.x0, b.y1]])
  if angle in (0, 90):
    return corners
  flat = mtext.Text(0, 0, t.get_text(), fontproperties=t.get_fontproperties(),
                    linespacing=t.get_linespacing())
  flat.set_figure(t.get_figure(root=True))
  u = flat.get_window_extent(renderer)
  c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
  half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [u.width / 2, u.height / 2]
  return half @ np.array([[c, s], [-s, c]]) + [(b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2]


def _overlap(p: np.ndarray, q: np.ndarray) -> bool:
  """Convex quads p, q [4, 2] overlap by more than TOL_PX (separating-axis test)."""
  for poly in (p, q):
    for k in range(4):
      edge = poly[(k + 1) % 4] - poly[k]
      axis = np.array([-edge[1], edge[0]]) / (np.hypot(*edge) or 1.0)
      a, b = p @ axis, q @ axis
      if a.max() <= b.min() + TOL_PX or b.max() <= a.min() + TOL_PX:
        return False
  return True


def no_overlaps(fig, drawn=None) -> list[str]:
  texts, renderer = drawn or drawn_texts(fig)
  roles = _roles(fig)
  quads = [_quad(t, renderer) for t in texts]
  lo, hi = np.array([q.min(0) for q in quads]), np.array([q.max(0) for q in quads])
  out = []
  for i in range(len(texts)):
    near = np.nonzero(np.all((hi[i + 1:] > lo[i] + TOL_PX) & (lo[i + 1:] < hi[i] - TOL_PX),
                             axis=1))[0] + i + 1
    for j in near:
      if _overlap(quads[i], quads[j]):
        out.append(f"{_describe(texts[i], roles)} overlaps {_describe(texts[j], roles)}")
  return out


def _data_x(ax) -> np.ndarray:
  """Finite x of the data drawn in ``ax``'s data coordinates: lines, collections (scatter,
  bands, error bars) and images (pixel centres)."""
  xs = []
  for a in ax.get_children():
    if not a.get_visible():
      continue
    if isinstance(a, lines.Line2D) and a.get_transform() == ax.transData:
      xs.append(np.asarray(a.get_xdata(), np.float64))
    elif isinstance(a, image.AxesImage):
      x0, x1 = a.get_extent()[:2]
      half = (x1 - x0) / a.get_array().shape[1] / 2
      xs.append(np.array([x0 + half, x1 - half]))
    elif hasattr(a, "get_datalim") and a.get_transform() == ax.transData:
      lim = a.get_datalim(ax.transData)
      if np.all(np.isfinite(lim.intervalx)) and lim.width >= 0:
        xs.append(np.asarray(lim.intervalx, np.float64))
  x = np.concatenate(xs) if xs else np.zeros(0)
  return x[np.isfinite(x)]


def _labelled(axis, drawn: set) -> list:
  """(location, label text) of ``axis``' major and minor ticks whose label was drawn."""
  ticks = axis.get_major_ticks() + axis.get_minor_ticks()
  return [(t.get_loc(), lab.get_text()) for t in ticks for lab in (t.label1, t.label2)
          if id(lab) in drawn]


def x_ticks_cover(fig, drawn=None) -> list[str]:
  texts, _ = drawn or drawn_texts(fig)
  drawn, out = {id(t) for t in texts}, []
  for i, ax in enumerate(fig.axes):
    x = _data_x(ax)
    if not ax.axison or x.size == 0 or ax.get_label() == "<colorbar>":
      continue  # nothing plotted, or a colour bar (fig.colorbar labels its axes so)
    scale = ax.xaxis.get_transform()
    with np.errstate(all="ignore"):
      tx = scale.transform(x.reshape(-1, 1))[:, 0]
    lo, hi = x[np.argmin(tx)], x[np.argmax(tx)]
    if not hi > lo:
      continue
    ticks = [tk for sib in ax.get_shared_x_axes().get_siblings(ax)
             for tk in _labelled(sib.xaxis, drawn)]
    if not ticks:
      out.append(f"x axis of {_panel(ax, i)}: no labelled tick for data in [{lo:g}, {hi:g}]")
      continue
    t_lo, t_hi = scale.transform([[lo], [hi]])[:, 0]
    loc, label = max(ticks, key=lambda tk: tk[0])
    frac = (scale.transform([[loc]])[0, 0] - t_lo) / (t_hi - t_lo)
    if frac < COVER - 1e-9:
      out.append(f"x axis of {_panel(ax, i)}: the last labelled tick {readable(label)!r} "
                 f"(x={loc:g}) is at {frac:.0%} of the data's x range [{lo:g}, {hi:g}] (needs "
                 f">= {COVER:.0%})")
  return out


def marks_on_series(fig, drawn=None) -> list[str]:
  out = []
  for i, ax in enumerate(fig.axes):
    gid = lambda a: a.get_gid() or ""
    series: dict = {}
    for l in ax.get_lines():
      if gid(l).startswith("series:"):
        series.setdefault(gid(l)[len("series:"):], []).append(l)
    for m in (l for l in ax.get_lines() if gid(l).startswith("marks:")):
      key = gid(m)[len("marks:"):]
      if key not in series:
        out.append(f"markers {key!r} of {_panel(ax, i)} name no series (no gid 'series:{key}')")
        continue
      sx, sy = (np.concatenate([np.asarray(v, np.float64) for v in vs]) for vs in
                zip(*(l.get_data() for l in series[key])))
      for x, y in zip(*(np.asarray(v, np.float64) for v in m.get_data())):
        at = np.isclose(sx, x, rtol=1e-9, atol=0)
        if not np.any(at & np.isclose(sy, y, rtol=1e-9, atol=0)):
          there = ", ".join(f"{v:.3g}" for v in sy[at]) or "no point"
          out.append(f"marker {key!r} of {_panel(ax, i)} at (x={x:g}, y={y:.3g}) is off its "
                     f"series (there y={there})")
  return out


def plain_log_labels(fig, drawn=None) -> list[str]:
  texts, _ = drawn or drawn_texts(fig)
  drawn, out = {id(t) for t in texts}, []
  for i, ax in enumerate(fig.axes):
    for xy, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
      if axis.get_scale() != "log":
        continue
      for loc, label in _labelled(axis, drawn):
        m = SCI.search(label)
        if m and -3 <= int(m.group(1).replace("\u2212", "-")) <= 3:
          out.append(f"{xy} tick label {readable(label)!r} of {_panel(ax, i)} on a log axis "
                     f"reads a x 10^b; plainly it is {loc:g}")
  return out


CHECKS = (inside_canvas, no_overlaps, x_ticks_cover, marks_on_series, plain_log_labels)


def problems(fig) -> list[str]:
  """Every check's problems, each line prefixed with the check's name."""
  drawn = drawn_texts(fig)
  return [f"{c.__name__}: {p}" for c in CHECKS for p in c(fig, drawn)]


def check(fig) -> None:
  """Raise :class:`RenderError` listing every problem of ``fig`` (one line each)."""
  found = problems(fig)
  if found:
    raise RenderError(f"{len(found)} render problem(s):\n" + "\n".join(found))
