"""Every app's flags parsed in process (``parse(flag_dict) -> Spec``, experiments/*.py), bad
values included: ``cli.parse_argv`` gives an app's flags in a fresh ``FlagValues``, so no
Python+JAX process is started per case. What the user sees for a bad flag (one line, exit 2)
is tested once per app in tests/test_experiments.py (e2e)."""
import re

import numpy as np
import pytest
from absl import flags

from collapse_jax import cli, jobs
from experiments import precision_sweep


def _parsed(app, tmp_path, *args):
  """``app.parse`` of these flags, with an --out that does not exist yet."""
  return app.parse(cli.parse_argv(app.define_flags, [*args, f"--out={tmp_path / 'x'}"]))


def _sweep(tmp_path, *args):
  return _parsed(precision_sweep, tmp_path, "--max_len=64", *args)


def test_precision_sweep_defaults_parse_to_the_documented_spec(tmp_path):
  spec = _sweep(tmp_path)
  assert [p.name for p in spec.policies] == ["bfloat16"] and spec.reference
  assert spec.heads == [1, 4, 16] and spec.seeds == [0] and spec.cfg.num_heads == 1
  assert spec.cfg.max_len == 65 and spec.cfg.d_model == 64 and spec.cfg.pe == "rope"
  np.testing.assert_array_equal(spec.grid, np.arange(17, 65))  # n > the 16-token prefix
  assert spec.family == {"token": 1, "prefix_len": 16, "prefix_ids": None}
  assert cli.job_spec(spec.flags)["dtype"] == "bfloat16"
  assert not set(cli.job_spec(spec.flags)) & cli.NOT_RESULTS
  spec = _sweep(tmp_path, "--dtype=float64,float32", "--prefix_ids=3,4", "--lengths=log:3:64:5")
  assert not spec.reference and spec.family["prefix_ids"] == [3, 4] and spec.grid[0] == 3
  assert not (tmp_path / "x").exists()  # parsing creates nothing


@pytest.mark.parametrize("args,msg", [
    (["--dtype=bf17"], "valid: float64, float32, bfloat16"),
    (["--seeds=a"], "--seeds must be a comma list of integers"),
    (["--token=999"], "--token"),
    (["--prefix_ids=100,-3"], "--prefix_ids"),
    (["--chunk=0"], "--chunk must be >= 1"),
    (["--family=stream_repeat_last", "--engine=causal"], "no single shared sequence"),
    (["--resume"], "holds no job"),
    (["--coordinator=localhost:1"], "go together"),
    (["--max_len=100000", "--heads=16", "--memory_budget=0.01"], "raise --memory_budget"),
    (["--heads=3"], "does not divide d_model"),
    (["--pe=xpos"], "rope"),
    (["--family=ones"], "repeat"),
    (["--pe=learned", "--lengths=1:9000"], "exceeds the learned PE table"),
    (["--lengths=1:10"], "prefix_repeat needs n > prefix length"),
    (["--lengths=1:10:0"], "step must be >= 1"),
    (["--fp8_scaling", "--dtype=bfloat16"], "fp8 presets only"),
    (["--heartbeat=-1"], "--heartbeat must be >= 0"),
    (["--weight_quant=Q4_1", "--d_model=48", "--heads=1"], "--d_model must be a multiple of 32"),
    (["--weight_quant=Q4_K"], "weight_quant"),
])
def test_precision_sweep_refuses_bad_values(args, msg, tmp_path):
  """A ValueError of ours or absl's own ``flags.Error`` (enums, integers), naming the flag;
  nothing is created."""
  with pytest.raises((ValueError, flags.Error), match=re.escape(msg)):
    _sweep(tmp_path, *args)
  assert not (tmp_path / "x").exists()


def test_precision_sweep_resume_compares_the_stored_flags(tmp_path):
  out = tmp_path / "x"
  fl = cli.parse_argv(precision_sweep.define_flags, ["--max_len=64", f"--out={out}"])
  jobs.open_out(str(out), "sweep", cli.job_spec(fl), ["c"], "precision_sweep")
  with pytest.raises(FileExistsError, match="add --resume"):
    precision_sweep.parse(fl)
  fl2 = cli.parse_argv(precision_sweep.define_flags, ["--max_len=64", f"--out={out}", "--resume"])
  assert precision_sweep.parse(fl2).grid[-1] == 64
  fl3 = cli.parse_argv(precision_sweep.define_flags, ["--max_len=80", f"--out={out}", "--resume"])
  with pytest.raises(ValueError, match="--max_len was 64, now 80"):
    precision_sweep.parse(fl3)


# -- attribution (built on the precision sweep's flags) ------------------------------------------

def _attribution(tmp_path, *args):
  from experiments import attribution
  return _parsed(attribution, tmp_path, *args)


def test_attribution_defaults_parse_to_the_documented_spec(tmp_path):
  spec = _attribution(tmp_path)
  names = [p.name for p in spec.policies]
  assert names[:2] == ["bfloat16:all", "bfloat16:none"] and "bfloat16:drop:rope" in names
  assert "bfloat16:only:@attention" in names and "bfloat16:angles:float64" in names
  assert len(names) == len(set(names)) == 2 + 2 * 13 + 8 + 1
  assert spec.heads == [1] and not spec.reference and spec.cfg.num_heads == 1
  assert spec.grid[0] == 17 and spec.grid[-1] == 16384 and len(spec.grid) == 16368
  spec = _attribution(tmp_path, "--kinds=drop", "--dtype=float16", "--pe=alibi", "--max_len=64")
  assert [p.name for p in spec.policies][2:] == [
      f"float16:drop:{p}" for p in ("embed", "norm", "qkv", "scores", "probs", "heads",
                                    "attn_out", "residual", "mlp_hidden", "mlp_act", "mlp_out",
                                    "final_norm")]
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,msg", [
    (["--dtype=bfloat16,float16"], "--dtype takes one value"),
    (["--heads=1,4"], "--heads takes one value"),
    (["--reference"], "pass --noreference"),
    (["--kinds=swap"], "unknown attribution kinds"),
    (["--dtype=float64"], "rounds nothing"),
])
def test_attribution_refuses_bad_values(args, msg, tmp_path):
  with pytest.raises((ValueError, flags.Error), match=re.escape(msg)):
    _attribution(tmp_path, *args)
  assert not (tmp_path / "x").exists()


# -- rope_shift ----------------------------------------------------------------------------------

def _rope_shift(tmp_path, *args):
  from experiments import rope_shift
  return _parsed(rope_shift, tmp_path, *args)


def test_rope_shift_defaults_parse_to_the_documented_spec(tmp_path):
  spec = _rope_shift(tmp_path)
  assert [p.name for p in spec.policies] == ["float32", "float32+f64_angles", "bfloat16",
                                             "bfloat16+f64_angles"]
  assert spec.policies[1].rope_angle_dtype == np.float64 and spec.policies[0].rope_angle_dtype is None
  assert spec.lens == [128, 256, 512, 1024] and spec.shifts == [16, 500, 2000]
  assert spec.cfg.pe == "rope" and spec.cfg.num_heads == 4 and spec.cfg.max_len >= 1024 + 2000
  spec = _rope_shift(tmp_path, "--model=smollm2", "--nof64_angles", "--dtype=bfloat16")
  assert spec.cfg is None and [p.name for p in spec.policies] == ["bfloat16"]
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,msg", [
    (["--dtype=float64"], "float64 computes its angles in float64"),
    (["--shifts=0"], "--shifts must be >= 1"),
    (["--lengths=1"], "--lengths must be >= 2"),
    (["--samples=0"], "--samples must be >= 1"),
    (["--heads=1,2"], "--heads takes one value"),
    (["--seeds=0,1"], "--seeds takes one value"),
    (["--model=nope"], "nope"),
])
def test_rope_shift_refuses_bad_values(args, msg, tmp_path):
  with pytest.raises((ValueError, flags.Error), match=re.escape(msg)):
    _rope_shift(tmp_path, *args)
  assert not (tmp_path / "x").exists()
