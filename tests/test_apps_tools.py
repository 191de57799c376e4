"""The tool and training apps' flags parsed in process (``parse(flag_dict) -> Spec``: train,
bench_generate, bench_sweep, isa_probe, gallery, bf16_floor), bad values included, as
tests/test_apps.py does for precision_sweep: ``cli.parse_argv`` gives an app's flags in a
fresh ``FlagValues``, so no Python+JAX process is started per case and no JAX program is
compiled. What the user sees for a bad flag (one line, exit 2) is tested per app in
tests/test_experiments.py (e2e)."""
import json
import re

import numpy as np
import pytest
from absl import flags

from collapse_jax import cli, config, isa, jobs
from collapse_jax.figures import samples
from experiments import bench_generate, bench_sweep, bf16_floor, gallery, isa_probe, train

BAD = (ValueError, flags.Error, FileExistsError)


def _parse(app, *args):
  return app.parse(cli.parse_argv(app.define_flags, list(args)))


def _refused(app, args, msg, out=None):
  """``app`` refuses ``args`` with ``msg`` in a ValueError of ours or absl's own
  ``flags.Error`` (enums, integers); nothing is created at ``out``."""
  with pytest.raises(BAD, match=re.escape(msg)):
    _parse(app, *args)
  assert out is None or not out.exists()


# -- train -----------------------------------------------------------------------------------

TINY = ["--layers=1", "--d_model=16", "--heads=2", "--l_train=4", "--eval_factor=2",
        "--max_len=40", "--batch=16", "--eval_samples=16", "--grad_samples=4",
        "--onset_dtype=bfloat16"]


def test_train_defaults_parse_to_the_documented_spec(tmp_path):
  out = tmp_path / "x"
  spec = _parse(train, f"--out={out}")
  assert list(spec.precisions) == ["float32", "bfloat16"]
  assert spec.precisions["bfloat16"].forward_preset == "bfloat16"
  assert [p.name for p in spec.onset] == ["float32", "bfloat16"]
  np.testing.assert_array_equal(spec.ns, np.arange(1, 65))  # 1..eval_factor * l_train
  assert (spec.cfg.num_layers, spec.cfg.d_model, spec.cfg.num_heads) == (2, 64, 4)
  assert (spec.cfg.pe, spec.cfg.norm, spec.cfg.mlp) == ("rope", "rmsnorm", "gelu")
  assert spec.cfg.max_len == 2050 and spec.cfg.vocab_size == 68  # BOS, 0, 1, counts 0..64
  assert (spec.opt.lr, spec.opt.warmup, spec.opt.steps) == (3e-3, 100, 2000)
  assert spec.cell == dict(task="count_ones", seed=0, batch_size=64, l_train=16, eval_every=250,
                           eval_samples=256, grad_samples=64, max_count=2048,
                           memory_budget_gib=2.0)
  job = cli.job_spec(spec.flags)
  assert job["dtype"] == ["float32", "bfloat16"] and not set(job) & cli.NOT_RESULTS
  spec = _parse(train, *TINY, "--dtype=bfloat16_weights", "--lengths=2:8:2", "--task=copy_last",
                "--seeds=3", f"--out={out}")
  assert list(spec.precisions) == ["bfloat16_weights"] and spec.cell["seed"] == 3
  assert spec.ns.tolist() == [2, 4, 6, 8] and spec.cfg.max_len == 42 and spec.cfg.vocab_size == 12
  assert spec.cell["task"] == "copy_last"
  assert not out.exists()  # parsing creates nothing


@pytest.mark.parametrize("args,msg", [
    # every case of tests/test_experiments.py::test_train_bad_flags_stop_with_one_line
    (["--dtype=float64"], "unknown training precision 'float64'"),
    (["--seeds=0,1"], "--seeds takes one value"),
    (["--l_train=0"], "--l_train must be >= 1"),
    (["--max_len=0"], "--max_len must be >= 1"),
    (["--warmup=5000"], "warmup must be in 0..steps-1 (1999)"),
    (["--onset_dtype=float32,float32"], "--onset_dtype repeats a preset"),
    (["--dtype=float32,float32"], "--dtype must name distinct training precisions"),
    # and the rest of parse's checks
    (["--dtype="], "--dtype must name distinct training precisions"),
    (["--seeds=a"], "--seeds must be a comma list of integers"),
    (["--seeds=-1"], "--seeds must be >= 0"),
    (["--heads=2,4"], "--heads takes one value"),
    (["--heads=3"], "does not divide d_model"),
    (["--onset_dtype=bf17"], "unknown precision 'bf17'"),
    (["--onset_dtype="], "--onset_dtype is empty"),
    (["--eval_factor=0"], "--eval_factor must be >= 1"),
    (["--batch=0"], "--batch must be >= 1"),
    (["--eval_every=0"], "--eval_every must be >= 1"),
    (["--eval_samples=0"], "--eval_samples must be >= 1"),
    (["--grad_samples=0"], "--grad_samples must be >= 1"),
    (["--steps=0"], "steps must be >= 1"),
    (["--lr=0"], "lr must be > 0"),
    (["--lengths=1:65"], "--lengths reaches n=65, beyond --max_len=64 (--eval_factor * --l_train)"),
    (["--lengths=1:10:0"], "step must be >= 1"),
    (["--heartbeat=-1"], "--heartbeat must be >= 0"),
    (["--coordinator=localhost:1"], "go together"),
    (["--distributed", "--num_processes=2"], "do not also give"),
    (["--resume"], "holds no job"),
    (["--task=nope"], "count_ones|copy_first|copy_last"),  # absl: enum
    (["--steps=x"], "invalid literal for int()"),  # absl: integer
    (["--pe=xpos"], "rope"),
])
def test_train_refuses_bad_values(args, msg, tmp_path):
  out = tmp_path / "x"
  _refused(train, [f"--out={out}", *args], msg, out)


def test_train_refuses_an_out_it_cannot_take(tmp_path):
  _refused(train, ["--coordinator=localhost:1", "--num_processes=2", "--process_id=0", "--out="],
           "a job of several processes needs --out")
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "f").write_text("")
  _refused(train, [f"--out={busy}"], "already holds files")
  assert [p.name for p in busy.iterdir()] == ["f"]


def test_train_resume_compares_the_stored_flags(tmp_path):
  out = tmp_path / "x"
  fl = cli.parse_argv(train.define_flags, [*TINY, f"--out={out}"])
  jobs.open_out(str(out), "train", cli.job_spec(fl), list(train.parse(fl).precisions), "train")
  with pytest.raises(FileExistsError, match="add --resume"):
    train.parse(fl)
  again = _parse(train, *TINY, f"--out={out}", "--resume", "--heartbeat=5")  # not a result flag
  assert list(again.precisions) == ["float32", "bfloat16"]
  _refused(train, [*TINY, f"--out={out}", "--resume", "--steps=1000"],
           "--steps was 2000, now 1000")


# -- bench_generate --------------------------------------------------------------------------

def test_bench_generate_defaults_parse_to_the_documented_spec():
  spec = _parse(bench_generate)
  assert [p.name for p in spec.policies] == ["float32"] and spec.lens == [100, 2000]
  assert spec.flags["model"] == "smollm2" and spec.flags["new_tokens"] == 32
  assert spec.flags["repeats"] == 2 and spec.flags["hf"] and not spec.flags["on_path"]
  assert spec.batches == [1]
  spec = _parse(bench_generate, "--dtype=float32,bfloat16", "--prompt_lens=40", "--nohf",
                "--model=gemma3", "--on_path", "--batch=1,8")
  assert [p.name for p in spec.policies] == ["float32", "bfloat16"] and spec.lens == [40]
  assert spec.batches == [1, 8]
  assert not spec.flags["hf"] and spec.flags["model"] == "gemma3" and spec.flags["on_path"]


@pytest.mark.parametrize("args,msg", [
    (["--dtype=bf17"], "unknown precision 'bf17'"),
    (["--prompt_lens=1"], "--prompt_lens must be >= 2"),
    (["--prompt_lens=a"], "--prompt_lens must be a comma list of integers"),
    (["--prompt_lens=100,100"], "--prompt_lens repeats a value"),
    (["--new_tokens=1"], "--new_tokens must be >= 2"),
    (["--repeats=0"], "--repeats must be >= 1"),
    (["--batch=0"], "--batch must be >= 1"),
    (["--model=llama"], "smollm2"),  # absl: enum
    (["--new_tokens=x"], "invalid literal for int()"),
])
def test_bench_generate_refuses_bad_values(args, msg):
  _refused(bench_generate, args, msg)


# -- bench_sweep -----------------------------------------------------------------------------

def test_bench_sweep_defaults_parse_to_the_documented_spec():
  spec = _parse(bench_sweep)
  assert spec.policy.name == "bfloat16" and spec.Ns is None
  assert (spec.cfg.num_layers, spec.cfg.d_model, spec.cfg.num_heads) == (2, 64, 4)
  assert spec.cfg.vocab_size == 32 and spec.cfg.max_len == config.DecoderConfig().max_len
  assert (spec.flags["max_len"], spec.flags["loop_lengths"], spec.flags["repeats"]) == (512, 16, 3)
  spec = _parse(bench_sweep, "--scaling=64,256", "--heads=2", "--d_model=16", "--dtype=float32")
  assert spec.Ns == [64, 256] and spec.cfg.num_heads == 2 and spec.policy.name == "float32"
  assert _parse(bench_sweep, "--scaling_cell=64").flags["scaling_cell"] == 64


@pytest.mark.parametrize("args,msg", [
    (["--dtype=float32,bfloat16"], "--dtype takes one value"),
    (["--dtype=bf17"], "unknown precision 'bf17'"),
    (["--heads=2,4"], "--heads takes one value"),
    (["--heads=3"], "does not divide d_model"),
    (["--scaling=a"], "--scaling must be a comma list of integers"),
    (["--scaling=0,64"], "--scaling must be >= 1"),
    (["--max_len=0"], "--max_len must be >= 1"),
    (["--loop_lengths=0"], "--loop_lengths must be >= 1"),
    (["--repeats=0"], "--repeats must be >= 1"),
    (["--layers=x"], "invalid literal for int()"),
])
def test_bench_sweep_refuses_bad_values(args, msg):
  _refused(bench_sweep, args, msg)


# -- isa_probe -------------------------------------------------------------------------------

needs_x86 = pytest.mark.skipif(isa.native_isa() is None, reason="the ISA probe needs x86-64")


@needs_x86
def test_isa_probe_defaults_parse_to_the_documented_spec(tmp_path):
  out = tmp_path / "x"
  spec = _parse(isa_probe, f"--out={out}")
  assert spec.settings == ["reference", "native", "SSE4_2", "AVX2"]
  assert spec.flags["recorded"] == isa_probe.RECORDED and spec.flags["forwards"]
  assert not spec.flags["record"]
  assert _parse(isa_probe, "--settings=reference,avx,native").settings == [
      "reference", "AVX", "native"]
  assert not out.exists()


@needs_x86
@pytest.mark.parametrize("args,msg", [
    (["--settings=native,AVX2"], "--settings needs 'reference'"),
    (["--settings=reference,AVX9"], "got ['AVX9']"),
    (["--settings="], "--settings needs 'reference'"),
    (["--record", "--noforwards"], "--record needs --forwards"),
])
def test_isa_probe_refuses_bad_values(args, msg, tmp_path):
  out = tmp_path / "x"
  _refused(isa_probe, [f"--out={out}", *args], msg, out)


# -- gallery ---------------------------------------------------------------------------------

def test_gallery_defaults_parse_to_the_documented_spec(tmp_path):
  out = tmp_path / "x"
  assert _parse(gallery, f"--out={out}").names == list(samples.SAMPLES)
  assert _parse(gallery, "--figures=train,collapse").names == ["train", "collapse"]
  assert not out.exists()


@pytest.mark.parametrize("args,msg", [
    (["--figures=collapse,nope"], "unknown --figures ['nope']; known: collapse"),
    (["--figures=Collapse"], "unknown --figures ['Collapse']"),
])
def test_gallery_refuses_bad_values(args, msg, tmp_path):
  out = tmp_path / "x"
  _refused(gallery, [f"--out={out}", *args], msg, out)


# -- bf16_floor ------------------------------------------------------------------------------

def _sweep_run(path, experiment="precision_sweep", family="prefix_repeat", dtypes=("bfloat16",)):
  """A finished precision_sweep's results.json as bf16_floor reads it (records of heads 1,
  seed 0; float64 as the reference)."""
  path.mkdir()
  cfg = config.DecoderConfig(num_layers=1, d_model=16, num_heads=4, vocab_size=32, max_len=65)
  rec = lambda d: {"dtype": d, "heads": 1, "seed": 0, "lengths": list(range(17, 65))}
  run = {"experiment": experiment, "family": family, "config": cfg.to_dict(),
         "flags": {"token": 1, "prefix_len": 16, "prefix_ids": ["3", "4"]},
         "runs": [rec(d) for d in dtypes], "reference": [rec("float64")]}
  (path / "results.json").write_text(json.dumps(run))
  return path


def test_bf16_floor_defaults_parse_to_the_documented_spec(tmp_path):
  out = tmp_path / "x"
  spec = _parse(bf16_floor, f"--out={out}")
  assert [p.name for p in spec.policies] == ["float64", "bfloat16"] and spec.ns == [1000, 4000]
  assert (spec.heads, spec.seed, spec.records, spec.top) == (1, 0, None, 8192)
  assert (spec.cfg.num_layers, spec.cfg.d_model, spec.cfg.num_heads) == (2, 64, 1)
  assert spec.cfg.vocab_size == 32 and spec.cfg.max_len == 8193
  assert spec.grid[0] == 17 and spec.grid[-1] == 8192 and spec.query_chunk is None
  assert len(spec.fam.tokens) >= 8193
  spec = _parse(bf16_floor, "--at=20,40", "--max_len=64", "--d_model=16")
  assert spec.cfg.max_len == 65 and spec.top == 64 and spec.grid[-1] == 64
  spec = _parse(bf16_floor, "--at=20", "--max_len=2048", "--d_model=16", "--memory_budget=0.05")
  assert 16 <= spec.query_chunk < 2049  # the float64 pass runs in chunks of query rows
  assert not out.exists()


def test_bf16_floor_takes_a_finished_sweep(tmp_path):
  run = _sweep_run(tmp_path / "sweep")
  spec = _parse(bf16_floor, f"--sweep_dir={run}", "--at=20,40")
  assert [r["dtype"] for r in spec.records] == ["bfloat16", "float64"]
  assert spec.grid.tolist() == list(range(17, 65)) and spec.top == 64
  assert (spec.cfg.num_layers, spec.cfg.d_model, spec.cfg.num_heads) == (1, 16, 1)
  assert spec.fam.tokens[:3].tolist() == [3, 4, 1]  # the sweep's --prefix_ids, then --token


@pytest.mark.parametrize("args,msg", [
    (["--dtype=bf17"], "unknown precision 'bf17'"),
    (["--at=0,40"], "--at must be >= 1"),
    (["--at=a"], "--at must be a comma list of integers"),
    (["--heads=1,4"], "--heads takes one value"),
    (["--seeds=0,1"], "--seeds takes one value"),
    (["--heads=3"], "does not divide d_model"),
    (["--max_len=0"], "--max_len must be >= 1"),
    (["--max_len=64", "--lengths=1:100"], "--lengths reaches n=100, beyond --max_len=64"),
    (["--memory_budget=0.00001"], "raise --memory_budget"),
    (["--sweep_dir=/nonexistent/run"], "no results.json"),
    (["--d_model=x"], "invalid literal for int()"),
])
def test_bf16_floor_refuses_bad_values(args, msg, tmp_path):
  out = tmp_path / "x"
  _refused(bf16_floor, [f"--out={out}", *args], msg, out)


@pytest.mark.parametrize("kw,args,msg", [
    (dict(experiment="train"), [], "is not a prefix_repeat precision_sweep run"),
    (dict(family="stream_repeat_last"), [], "is not a prefix_repeat precision_sweep run"),
    (dict(dtypes=("float32",)), [], "holds no record for heads=1 seed=0"),
    ({}, ["--seeds=1"], "holds no record for heads=1 seed=1"),
])
def test_bf16_floor_refuses_a_sweep_it_cannot_explain(kw, args, msg, tmp_path):
  run = _sweep_run(tmp_path / "sweep", **kw)
  out = tmp_path / "x"
  _refused(bf16_floor, [f"--out={out}", f"--sweep_dir={run}", *args], msg, out)


# -- parsing compiles nothing ----------------------------------------------------------------

def test_parsing_compiles_no_jax_program(tmp_path):
  """Every app's parse (defaults, and bf16_floor on a finished sweep) runs without one XLA
  compile: parsing is checks and arithmetic, the programs run in main."""
  from jax import monitoring
  compiles, listening = [], [True]
  monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: listening[0] and name.endswith("backend_compile_duration")
      and compiles.append(name))
  try:
    _parse(train, f"--out={tmp_path / 'x'}")
    _parse(bench_generate)
    _parse(bench_sweep, "--scaling=64")
    _parse(gallery)
    _parse(bf16_floor)
    _parse(bf16_floor, f"--sweep_dir={_sweep_run(tmp_path / 'sweep')}", "--at=20")
    if isa.native_isa() is not None:
      _parse(isa_probe)
  finally:
    listening[0] = False
  assert compiles == []
