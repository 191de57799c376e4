"""collapse_jax.figures.tasks: every figure drawn in process from its synthetic sample
(collapse_jax/figures/samples.py) passes every render check (collapse_jax/figures/check.py)."""
import pytest

from collapse_jax.figures import tasks, gallery, samples


@pytest.mark.parametrize("name", samples.names("tasks"))
def test_the_sample_figure_passes_the_render_checks(name):
  assert gallery.draw_checked(name) == []


def test_every_figure_function_has_a_sample():
  assert samples.names("tasks") and samples.undrawn(tasks) == []


@pytest.mark.parametrize("names,ns,expected", [
    (("copy_last", "copy_first"), (5, 40), ["tasks_accuracy.png"]),
    (("copy_last", "count_ones"), (5, 40), ["tasks_accuracy.png", "tasks_counts.png"]),
    (("copy_last",), (4, 5, 40), ["tasks_accuracy.png", "tasks_octaves.png"]),
    (("copy_last",), (5, 40), ["tasks_accuracy.png", "tasks_models.png"]),
    (("copy_last",), (4, 5, 40), ["tasks_accuracy.png", "tasks_models.png",
                                  "tasks_models_octaves.png", "tasks_octaves.png"]),
])
def test_write_all_writes_the_figures_a_run_has(names, ns, expected, tmp_path):
  """experiments.tasks' figures: the accuracy always, the octaves only where an octave of n
  holds several n, the counts only with a count task's samples, the models side by side
  only with a --beside run (pooled per octave too where both runs have dense octaves; the
  bridge only with bridge rows: none here); each file a real PNG."""
  from collapse_jax import harness, tasks as tasks_lib
  rows = samples.task_samples(names, ns=ns)
  res = {"samples": rows, "summary": harness.summarize(rows), "bridge": [],
         "octaves": harness.summarize_octaves(rows)}
  runs = [("this model", res)]
  if "tasks_models.png" in expected:  # a second model's run, as --beside reads it
    other = samples.task_samples(names, ns=ns, seed=1)
    runs.append(("another model", {"summary": harness.summarize(other),
                                   "octaves": harness.summarize_octaves(other)}))
  files = tasks.write_all(res, str(tmp_path), "cap", tasks_lib.COUNT_TASKS, runs, "runs cap")
  assert files == expected and sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)
  assert all((tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
