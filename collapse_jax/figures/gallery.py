"""The gallery: every figure of the suite drawn from its sample (``figures.samples``), render
checked (``figures.check``), written as PNGs with an index.html into one directory.

The directory appears whole or not at all: everything is written into a temporary sibling
(``.tmp-gallery-*``) that is renamed onto ``out`` at the end (``out`` must be missing or empty).
"""
from __future__ import annotations

import html
import os
import shutil
import tempfile
import time

import matplotlib.pyplot as plt

from collapse_jax import plotting, results
from collapse_jax.figures import check, samples


def draw_checked(name: str, path: str | None = None) -> list[str]:
  """Draw sample ``name``, run every render check, write the PNG to ``path`` (if given) and
  close the figure. Returns the problems (empty: the figure passes)."""
  fig = samples.SAMPLES[name].draw(None)
  try:
    found = check.problems(fig)
    if path is not None:
      plotting.write(fig, path)
  finally:
    plt.close(fig)
  return found


def _index(rows) -> str:
  """index.html: one section per figure (its function, seconds, problems, the image)."""
  parts = ["<!doctype html><meta charset='utf-8'><title>collapse_jax figures</title>",
           "<h1>collapse_jax figures, drawn from synthetic samples</h1>",
           "<p>collapse_jax/figures/samples.py builds the inputs; collapse_jax/figures/check.py "
           "checks each figure.</p>"]
  for name, s, secs, found in rows:
    verdict = (f"<b>{len(found)} render problem(s)</b><ul>" + "".join(
        f"<li>{html.escape(p)}</li>" for p in found) + "</ul>") if found else "render checks pass"
    parts.append(f"<h2 id='{name}'>{name}.png</h2><p><code>collapse_jax.figures.{s.module}."
                 f"{s.figure.__name__}</code>, {secs:.1f} s; {verdict}</p>"
                 f"<img src='{name}.png' style='max-width:100%'>")
  return "\n".join(parts) + "\n"


def write_gallery(out: str, names=None, log=print) -> dict:
  """Draw ``names`` (default: every sample) into the directory ``out`` as <name>.png plus
  index.html. ``out`` must be missing or empty (FileExistsError otherwise). Returns
  {name: problems}."""
  names = list(samples.SAMPLES) if names is None else list(names)
  unknown = [n for n in names if n not in samples.SAMPLES]
  if unknown:
    raise KeyError(f"unknown figure(s) {unknown}; known: {', '.join(samples.SAMPLES)}")
  if os.path.isdir(out) and os.listdir(out) or os.path.exists(out) and not os.path.isdir(out):
    raise FileExistsError(f"--out {out!r} already holds files; choose a new directory")
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-gallery-")
  try:
    rows, found = [], {}
    for name in names:
      t0 = time.perf_counter()
      found[name] = draw_checked(name, os.path.join(tmp, f"{name}.png"))
      rows.append((name, samples.SAMPLES[name], time.perf_counter() - t0, found[name]))
      log(f"{name}.png: {len(found[name])} render problem(s)" if found[name] else
          f"{name}.png: render checks pass")
    with results.atomic_open(os.path.join(tmp, "index.html")) as f:
      f.write(_index(rows))
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)  # onto a missing or empty directory: atomic
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if os.path.isdir(out) and not os.listdir(out):
      os.rmdir(out)  # an empty --out made for this run (cli.run_dir): nothing half-written left
    raise
  return found
