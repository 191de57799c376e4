"""collapse_jax.plotting: the shared conventions (styles, half-ulp levels, log x ticks) and
collapse_plot with and without the float64 reference and 'absmax'."""
import matplotlib.pyplot as plt
import numpy as np

from collapse_jax import plotting


def test_half_ulp_in_the_storage_dtype():
  np.testing.assert_array_equal(plotting.half_ulp([1.0, 3.0], "bfloat16"), [2.0 ** -8, 2.0 ** -7])
  np.testing.assert_array_equal(plotting.half_ulp([1.0], "float8_e4m3fn_scaled"), [2.0 ** -4])
  assert plotting.half_ulp([1.0], "float64")[0] == 2.0 ** -53
  assert plotting.half_ulp([1.0], "no_such_preset") is None


def test_every_preset_has_its_own_style():
  styles = {name: plotting.dtype_style(name) for name in plotting.DTYPE_COLORS}
  looks = {(s["color"], str(s["ls"]), s["lw"]) for s in styles.values()}
  assert len(looks) == len(styles)
  assert plotting.dtype_style("float8_e5m2_scaled") == styles["float8_e5m2"]
  assert styles["float64"]["lw"] > styles["float32"]["lw"]
  assert styles["float64"]["zorder"] < styles["float16"]["zorder"]


def test_log_x_labels_decades_or_a_short_range():
  for hi, want in ((8192, {"$\\mathdefault{10^{2}}$", "$\\mathdefault{10^{3}}$"}), (8, {"5"})):
    fig, ax = plt.subplots()
    ax.plot([3, hi], [1, 2])
    plotting.log_x(ax)
    fig.canvas.draw()
    labels = {t.get_text() for t in ax.get_xticklabels() if t.get_text()}
    plt.close(fig)
    assert want <= labels, labels


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
  path = plotting.collapse_plot(recs, str(tmp_path / "a.png"), "t", reference=ref)
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  old = plotting.collapse_plot([_records("bfloat16", 1, False)], str(tmp_path / "b.png"), "t",
                               "linf")  # the positional signature, records without 'absmax'
  assert (tmp_path / "b.png").stat().st_size > 0 and old.endswith("b.png")
