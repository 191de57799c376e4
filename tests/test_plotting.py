"""collapse_jax.plotting: the shared conventions (styles, half-ulp levels, log x ticks)."""
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
