"""Results files (collapse_jax/results.py): the one results.json header, atomic writes."""
import json
import os

import pytest

import collapse_jax as cj
from collapse_jax import precision, results


def test_header_puts_the_common_keys_first_in_one_order():
  cfg = cj.DecoderConfig(num_layers=1, d_model=8, num_heads=2)
  pols = [precision.get_policy("bfloat16"), precision.get_policy("float32")]
  h = results.header("x", {"dtype": "bfloat16,float32"}, config=cfg, policies=pols, runs=[1],
                     caption="c")
  assert list(h) == ["experiment", "flags", "config", "policies", "environment", "runs",
                     "caption"]
  assert h["config"] == cfg.to_dict() and list(h["policies"]) == ["bfloat16", "float32"]
  assert h["policies"]["bfloat16"] == pols[0].describe()
  assert "numerics_path" in h["environment"]
  many = results.header("y", {}, config={"rope": cfg, "alibi": cfg.replace(pe="alibi")})
  assert many["config"]["alibi"]["pe"] == "alibi" and "policies" not in many
  assert list(results.header("z", {})) == ["experiment", "flags", "environment"]


def test_write_json_is_atomic_and_refuses_nothing_half_written(tmp_path):
  path = tmp_path / "r.json"
  results.write_json(str(path), {"a": [1.5, float("nan")]})
  assert json.loads(path.read_text())["a"][0] == 1.5
  with pytest.raises(TypeError):
    results.write_json(str(path), {"a": object()})
  assert json.loads(path.read_text())["a"][0] == 1.5  # the old file is whole
  assert not [f for f in os.listdir(tmp_path) if f.startswith(results.TMP_PREFIX)]
