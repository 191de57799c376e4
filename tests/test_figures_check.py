"""collapse_jax.figures.check: each render check fails on a figure broken on purpose and passes
on its repaired twin."""
import matplotlib.pyplot as plt
import numpy as np
import pytest

from collapse_jax import plotting
from collapse_jax.figures import check


@pytest.fixture
def fig_ax():
  fig, ax = plt.subplots(figsize=(5, 3.5))
  yield fig, ax
  plt.close(fig)


def test_a_footer_cut_off_at_the_right_edge_is_caught(fig_ax):
  fig, ax = fig_ax
  ax.plot([1, 2], [1, 2])
  t = fig.text(0.6, 0.95, "a footer that runs far past the right edge of this canvas", gid="footer")
  fig.tight_layout()
  [msg] = check.inside_canvas(fig)
  assert msg.startswith("footer 'a footer that runs") and "at the right by" in msg, msg
  t.set_x(0.01)
  assert check.inside_canvas(fig) == []


def test_an_x_label_drawn_over_the_footer_is_caught(fig_ax):
  fig, ax = fig_ax
  ax.plot([1, 2], [1, 2])
  ax.set_xlabel("n")
  fig.tight_layout()
  label = ax.xaxis.label.get_window_extent(check.drawn_texts(fig)[1])
  fig.text(label.x0 / fig.bbox.width, label.y0 / fig.bbox.height, "a footer over the label")
  [msg] = check.no_overlaps(fig)
  assert msg == "x label of panel 0 'n' overlaps figure text 'a footer over the label'", msg
  plotting.footer(fig, "a footer over the label")
  fig.texts[0].remove()
  assert check.no_overlaps(plotting.save(fig, None)) == []


def test_rotated_labels_are_boxes_of_their_own_angle(fig_ax):
  fig, ax = fig_ax
  ax.plot([-0.2, 4], [0, 1])
  ax.set_xticks([0, 1], ["a long tick label one", "a long tick label two"], rotation=30,
                ha="right")
  fig.subplots_adjust(left=0.3, bottom=0.4)
  texts, renderer = check.drawn_texts(fig)
  a, b = (t.get_window_extent(renderer) for t in ax.get_xticklabels())
  assert a.overlaps(b)  # their upright boxes overlap, their rotated ones do not
  assert check.no_overlaps(fig) == []
  ax.set_xticks([0, 0.05], ["a long tick label one", "a long tick label two"], rotation=30)
  assert "overlaps x tick label" in " ".join(check.no_overlaps(fig))


def test_ticks_that_stop_short_of_the_data_are_caught(fig_ax):
  fig, ax = fig_ax
  ax.plot([5, 10, 20, 40], [1, 2, 3, 4])
  ax.set_xscale("log")
  ax.set_xticks([5, 10, 20], ["5", "10", "20"])
  ax.xaxis.set_minor_formatter(plt.NullFormatter())
  [msg] = check.x_ticks_cover(fig)
  assert msg == ("x axis of panel 0: the last labelled tick '20' (x=20) is at 67% of the "
                 "data's x range [5, 40] (needs >= 80%)"), msg
  plotting.log_x(ax)
  assert check.x_ticks_cover(fig) == []


def test_ticks_of_a_twin_panel_count_and_an_unlabelled_axis_is_caught(fig_ax):
  fig, ax = fig_ax
  ax.plot([1, 9], [1, 2])
  twin = ax.twinx()
  twin.plot([1, 9], [5, 1])
  assert check.x_ticks_cover(fig) == []
  ax.set_xticks([])
  assert check.x_ticks_cover(fig)[0].startswith("x axis of panel 0: no labelled tick for data")


def test_a_marker_off_its_series_is_caught(fig_ax):
  fig, ax = fig_ax
  ax.plot([1, 2, 3], [0.5, 0.2, 0.1], gid="series:bf16")
  marks, = ax.plot([2], [0.2 * 2.5], "o", gid="marks:bf16")
  [msg] = check.marks_on_series(fig)
  assert msg == ("marker 'bf16' of panel 0 at (x=2, y=0.5) is off its series (there y=0.2)"), msg
  marks.set_data([2, 3], [0.2, 0.1])
  assert check.marks_on_series(fig) == []
  marks.set_gid("marks:f32")
  assert check.marks_on_series(fig) == [
      "markers 'f32' of panel 0 name no series (no gid 'series:f32')"]


def test_a_log_axis_reading_3_times_10_to_the_0_is_caught(fig_ax):
  fig, ax = fig_ax
  ax.plot([1, 2, 3], [0.6, 1.5, 3.0])
  ax.set_yscale("log")
  found = check.plain_log_labels(fig)
  says = "of panel 0 on a log axis reads a x 10^b; plainly it is"
  assert f"y tick label '3\u00d710^0' {says} 3" in found
  assert f"y tick label '6\u00d710^-1' {says} 0.6" in found
  plotting.log_y(ax)
  assert check.plain_log_labels(fig) == []


def test_check_raises_one_line_per_problem(fig_ax):
  fig, ax = fig_ax
  ax.plot([1, 40], [1, 2])
  ax.set_xticks([1, 20])
  fig.text(0.9, 0.5, "cut off at the right edge")
  with pytest.raises(check.RenderError) as e:
    check.check(fig)
  lines = str(e.value).splitlines()
  assert lines[0] == "2 render problem(s):"
  assert lines[1].startswith("inside_canvas: figure text 'cut off at the right edge'")
  assert lines[2].startswith("x_ticks_cover: x axis of panel 0: the last labelled tick '20'")
  fig.texts[0].remove()
  ax.set_xticks([1, 20, 40])
  check.check(fig)
  assert np.isfinite(fig.bbox.width)
