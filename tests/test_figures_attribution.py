"""collapse_jax.figures.attribution: every figure drawn in process from its synthetic sample
(collapse_jax/figures/samples.py) passes every render check (collapse_jax/figures/check.py)."""
import pytest

from collapse_jax.figures import attribution, gallery, samples


@pytest.mark.parametrize("name", samples.names("attribution"))
def test_the_sample_figure_passes_the_render_checks(name):
  assert gallery.draw_checked(name) == []


def test_every_figure_function_has_a_sample():
  assert samples.names("attribution") and samples.undrawn(attribution) == []
