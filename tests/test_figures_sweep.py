"""collapse_jax.figures.sweep: every figure drawn in process from its synthetic sample
(collapse_jax/figures/samples.py) passes every render check (collapse_jax/figures/check.py);
collapse_plot with and without the float64 reference and 'absmax'."""
import numpy as np
import pytest

from collapse_jax.figures import gallery, samples, sweep


@pytest.mark.parametrize("name", samples.names("sweep"))
def test_the_sample_figure_passes_the_render_checks(name):
  assert gallery.draw_checked(name) == []


def test_every_figure_function_has_a_sample():
  assert samples.names("sweep") and samples.undrawn(sweep) == []


def _records(dtype, heads, with_absmax=True):
  n = np.array([17, 64, 256, 1024])
  linf = {"float64": [1e-2, 3e-3, 8e-4, 2e-4], "bfloat16": [1e-2, 4e-3, 0.0, 0.0]}[dtype]
  r = {"heads": heads, "seed": 0, "dtype": dtype, "lengths": n, "linf": np.array(linf),
       "bitwise_equal": np.array(linf) == 0, "collapse_onset": 256 if dtype == "bfloat16" else -1}
  if with_absmax:
    r["absmax"] = np.full(4, 2.5)
  return r


def test_collapse_plot_with_reference_and_levels(tmp_path):
  recs = [_records(d, h) for d in ("bfloat16", "float64") for h in (1, 4)]
  ref = [_records("float64", h) for h in (1, 4)]
  path = sweep.collapse_plot(recs, str(tmp_path / "a.png"), "t", reference=ref)
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  old = sweep.collapse_plot([_records("bfloat16", 1, False)], str(tmp_path / "b.png"), "t",
                            "linf")  # the positional signature, records without 'absmax'
  assert (tmp_path / "b.png").stat().st_size > 0 and old.endswith("b.png")
