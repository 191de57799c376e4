"""collapse_jax.figures.real: every figure drawn in process from its synthetic sample
(collapse_jax/figures/samples.py) passes every render check (collapse_jax/figures/check.py)."""
import pytest

from collapse_jax.figures import real, gallery, samples


@pytest.mark.parametrize("name", samples.names("real"))
def test_the_sample_figure_passes_the_render_checks(name):
  assert gallery.draw_checked(name) == []


def test_every_figure_function_has_a_sample():
  assert samples.names("real") and samples.undrawn(real) == []


@pytest.mark.parametrize("windows", [["native"], ["native", "global", "512"]])
def test_write_all_writes_each_figure_of_a_run(windows, tmp_path):
  """real_model_collapse's figures: Figure 5 and the layers of the first window mode, the
  windows figure only with several modes; each file a real PNG."""
  runs = samples.real_runs(("float32", "bfloat16"), ("a",), windows=windows)
  files = real.write_all(runs, samples.settings(("a",)), windows, [512], str(tmp_path), "cap")
  assert files == ["real_model_collapse.png", "real_model_collapse_layers.png"] + (
      ["real_model_collapse_windows.png"] if len(windows) > 1 else [])
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
  assert all((tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
