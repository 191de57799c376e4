"""Every figure of the suite, by topic; the shared style lives in ``collapse_jax.plotting``.

  sweep        collapse_plot, isa_heatmap, floor_figure, synthetic_figure
  attribution  onsets_figure
  theory   softmax_lemmas_figure, oversquashing_figure, counting_figure
  real     figure5, layers_figure, windows_figure
  tasks    tasks_figure, counts_figure, bridge_figure
  train    train_figure
"""
from collapse_jax.figures import attribution, real, sweep, tasks, theory, train  # noqa: F401
