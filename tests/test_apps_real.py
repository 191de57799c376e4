"""The real-model apps' flags parsed in process (``parse(flag_dict) -> Spec``):
experiments/real_model_collapse.py and experiments/tasks.py, bad values included. Parsing
loads no model (``checkpoints.load_model`` is made to fail here) and creates nothing; the
runs themselves are the slow e2e tests of tests/test_experiments.py."""
import re

import numpy as np
import pytest
from absl import flags

from collapse_jax import checkpoints, cli, prompts, tasks as tasks_lib
from experiments import real_model_collapse, tasks


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
  def load_model(*a, **k):
    raise AssertionError("parse loaded a model")
  monkeypatch.setattr(checkpoints, "load_model", load_model)


def _real(tmp_path, *args):
  fl = cli.parse_argv(real_model_collapse.define_flags, [*args, f"--out={tmp_path / 'x'}"])
  return real_model_collapse.parse(fl)


def _tasks(tmp_path, *args):
  return tasks.parse(cli.parse_argv(tasks.define_flags, [*args, f"--out={tmp_path / 'x'}"]))


@pytest.mark.parametrize("args,msg", [
    (["--dtype=bf17"], "unknown precision 'bf17'"),
    (["--fp8_scaling"], "fp8 presets only"),
    (["--seeds=a"], "--seeds must be a comma list of integers"),
    (["--seeds=-1"], "--seeds must be >= 0"),
    (["--settings=a,z"], "unknown settings ['z']"),
    (["--engine=warp"], "unknown engine 'warp'"),
    (["--position=turn_end", "--engine=causal"], "--position=turn_end needs the exact engine"),
    (["--chunk=0"], "--chunk must be >= 1, got 0"),
    (["--memory_budget=0"], "--memory_budget must be > 0 GiB, got 0.0"),
    (["--max_len=0"], "--max_len must be >= 1"),
    (["--lengths=1:2000"], "--lengths reaches n=2000, beyond --max_len=1000"),
    (["--lengths=1:10:0"], "step must be >= 1"),
    (["--windows=native,native"], "--windows repeats a mode"),
    (["--windows=0"], "--windows takes native, global or a window size >= 1"),
    (["--model=llama"], "smollm2"),             # absl's own: enums, integers
    (["--position=middle"], "turn_end"),
    (["--chunk=x"], "--chunk"),
    (["--resume"], "holds no job"),             # the job flags (collapse_jax/jobs.py)
    (["--heartbeat=-1"], "--heartbeat must be >= 0"),
    (["--num_processes=2"], "--coordinator"),
    (["--attribution=groups"], "--dtype takes one value"),
    (["--attribution=swap", "--dtype=bfloat16"], "unknown attribution kinds"),
])
def test_real_model_collapse_refuses_bad_values(args, msg, tmp_path):
  with pytest.raises((ValueError, flags.Error), match=re.escape(msg)):
    _real(tmp_path, *args)
  assert not (tmp_path / "x").exists()


def test_real_model_collapse_takes_attribution_kinds_with_one_dtype(tmp_path):
  """The variants themselves need the model's config: main builds them once it is loaded."""
  spec = _real(tmp_path, "--attribution=drop,groups", "--dtype=bfloat16", "--settings=a,c")
  assert [p.name for p in spec.policies] == ["bfloat16"]
  assert spec.flags["attribution"] == ["drop", "groups"]


def test_real_model_collapse_defaults_parse_to_the_documented_spec(tmp_path):
  spec = _real(tmp_path)
  assert [p.name for p in spec.policies] == ["float32", "bfloat16", "float16"]
  assert spec.seeds == [0] and spec.settings == list(prompts.SETTINGS)
  np.testing.assert_array_equal(spec.grid, np.arange(1, 1001))
  assert spec.windows == ["native"] and spec.budget is None and not spec.cross_check
  assert spec.flags["model"] == "smollm2" and spec.flags["position"] == "digit"
  spec = _real(tmp_path, "--engine=exact", "--settings=a,d_left", "--memory_budget=0.5",
               "--windows=native,global,512", "--lengths=1,10,100", "--seeds=0,1")
  assert spec.cross_check and spec.budget == 0.5 * 2 ** 30 and spec.settings == ["a", "d_left"]
  assert spec.windows == ["native", "global", "512"] and list(spec.grid) == [1, 10, 100]
  assert spec.seeds == [0, 1]
  assert not _real(tmp_path, "--engine=exact", "--position=turn_end").cross_check
  assert not _real(tmp_path, "--engine=exact", "--nocross_check").cross_check
  assert not (tmp_path / "x").exists()  # parsing creates nothing


@pytest.mark.parametrize("parse", [_real, _tasks])
def test_an_out_that_holds_files_is_refused_before_any_model_loads(parse, tmp_path):
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "results.json").write_text("{}")
  with pytest.raises(FileExistsError, match="already holds files"):
    parse(tmp_path)
  assert [p.name for p in (tmp_path / "x").iterdir()] == ["results.json"]
  (tmp_path / "x" / "results.json").unlink()
  parse(tmp_path)  # an empty --out is fine


def test_tasks_defaults_parse_to_the_small_preset(tmp_path):
  spec = _tasks(tmp_path)
  assert [p.name for p in spec.policies] == ["float32", "bfloat16"]
  assert spec.tasks == ["copy_last", "copy_first", "count_ones"] and spec.modes == ["direct"]
  assert list(spec.lengths) == [2, 5, 10, 20] and spec.samples == 1
  # results.json records the flags with the presets resolved
  assert spec.flags["task"] == spec.tasks and spec.flags["lengths"] == "2,5,10,20"
  assert spec.flags["samples"] == 1 and spec.flags["max_new_tokens"] is None
  assert spec.flags["batch"] == 8 and not spec.flags["full"]
  assert not (tmp_path / "x").exists()


def test_tasks_full_is_the_paper_grid_and_an_explicit_flag_wins(tmp_path):
  spec = _tasks(tmp_path, "--full")
  assert spec.tasks == list(tasks_lib.TASKS) and spec.modes == list(tasks_lib.MODES)
  assert spec.samples == 5 and spec.flags["lengths"] == "log:2:1000:12"
  assert spec.lengths[0] == 2 and spec.lengths[-1] == 1000
  spec = _tasks(tmp_path, "--full", "--samples=2", "--task=count_ones", "--lengths=3,6")
  assert spec.samples == 2 and spec.tasks == ["count_ones"] and list(spec.lengths) == [3, 6]
  assert spec.modes == list(tasks_lib.MODES)
  spec = _tasks(tmp_path, "--task=count_ones", "--lengths=1,4")  # n = 1: count tasks only
  assert list(spec.lengths) == [1, 4]


@pytest.mark.parametrize("args,msg", [
    (["--dtype=bf17"], "unknown precision 'bf17'"),
    (["--task=copy_last,nope"], "unknown --task ['nope']; valid: "),
    (["--mode=direct,fancy"], "unknown --mode ['fancy']; valid: "),
    (["--lengths=1,5"], "the copy tasks need n >= 2"),
    (["--full", "--lengths=1,5"], "the copy tasks need n >= 2"),
    (["--lengths=1:10:0"], "step must be >= 1"),
    (["--samples=0"], "--samples must be >= 1, got 0"),
    (["--batch=0"], "--batch must be >= 1, got 0"),
    (["--max_new_tokens=0"], "--max_new_tokens must be >= 1, got 0"),
    (["--samples=x"], "--samples"),             # absl's own: enums, integers
    (["--model=llama"], "smollm2"),
    (["--resume"], "holds no job"),             # the job flags (collapse_jax/jobs.py)
    (["--heartbeat=-1"], "--heartbeat must be >= 0"),
])
def test_tasks_refuses_bad_values(args, msg, tmp_path):
  with pytest.raises((ValueError, flags.Error), match=re.escape(msg)):
    _tasks(tmp_path, *args)
  assert not (tmp_path / "x").exists()


def test_tasks_beside_reads_earlier_tasks_runs_and_refuses_anything_else(tmp_path):
  """--beside: each directory's results.json, written by experiments.tasks, gives a label
  (its model and prompt format) and its summary for tasks_models.png; a directory without
  one, or with another experiment's, is one line before anything runs."""
  from collapse_jax import harness, results
  from collapse_jax.figures import samples
  summary = harness.summarize(samples.task_samples(("copy_last",), ns=(5, 40)))
  for name, experiment in (("gemma", "tasks"), ("sweep", "precision_sweep")):
    (tmp_path / name).mkdir()
    results.write_json(str(tmp_path / name / "results.json"),
                       {"experiment": experiment, "model": "Gemma 3 270M",
                        "prompt_format": "plain", "summary": summary})
  spec = _tasks(tmp_path, f"--beside={tmp_path / 'gemma'}")
  [(label, res)] = spec.beside
  assert label == "Gemma 3 270M (plain text)" and res["summary"] == summary
  assert _tasks(tmp_path).beside == [] and "beside" not in cli.job_spec(spec.flags)
  for where, msg in (("sweep", "written by 'precision_sweep', not 'tasks'"),
                     ("nowhere", "no readable results.json (FileNotFoundError)")):
    with pytest.raises(ValueError, match=re.escape(msg)):
      _tasks(tmp_path, f"--beside={tmp_path / where}")
  assert not (tmp_path / "x").exists()


def test_importing_the_apps_defines_no_flags():
  for name in ("settings", "position", "cross_check", "task", "mode", "samples"):
    module = flags.FLAGS.find_module_defining_flag(name) if name in flags.FLAGS else None
    assert module is None or not module.endswith(("real_model_collapse.py", "tasks.py")), module


@pytest.mark.parametrize("parse", [_real, _tasks])
def test_model_takes_a_name_or_a_local_model_path(parse, tmp_path):
  """--model: a name of checkpoints.MODELS, a directory with config.json or a .gguf file,
  checked without loading anything; anything else is one line naming all three."""
  d = tmp_path / "mymodel"
  d.mkdir()
  with pytest.raises(ValueError, match="neither a name .smollm2, gemma3. nor a local HF"):
    parse(tmp_path, f"--model={d}")  # no config.json
  (d / "config.json").write_text("{}")
  assert parse(tmp_path, f"--model={d}").flags["model"] == str(d)
  (tmp_path / "m.gguf").write_bytes(b"GGUF")
  assert parse(tmp_path, f"--model={tmp_path / 'm.gguf'}").flags["model"].endswith("m.gguf")
