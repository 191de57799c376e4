"""collapse_jax.train.snapshot: a TrainState round-trips bit for bit (every precision, bf16
and fp8 leaves), atomically, and refuses a state of another shape or run identity."""
import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from collapse_jax.train import data, snapshot
from collapse_jax.train import state as state_lib

try:
  from train_helpers import CFG, L, PRECISIONS, same_bits, small_opt
except ImportError:
  from tests.train_helpers import CFG, L, PRECISIONS, same_bits, small_opt


@pytest.mark.slow  # tests/test_train_loop.py's resume test round-trips a snapshot by default
@pytest.mark.parametrize("name", PRECISIONS)
def test_snapshot_round_trips_exactly(name, tmp_path):
  tp, opt = state_lib.train_precision(name), small_opt()
  state = state_lib.init_state(CFG, tp, opt, 0)
  state, _ = state_lib.step_fn(CFG, tp, opt)(state, data.train_batch("copy_last", 0, 0, 8, L))
  path = str(tmp_path / "snap" / snapshot.FILE)
  snapshot.save(path, state, {"history": {"loss": [1.5]}})
  assert os.listdir(tmp_path / "snap") == [snapshot.FILE]  # no temporary file left
  back, meta = snapshot.load(path, state_lib.init_state(CFG, tp, opt, 5))
  same_bits(back, state)
  assert meta == {"history": {"loss": [1.5]}}
  other = state_lib.init_state(CFG.replace(d_model=8), tp, opt, 0)
  with pytest.raises(ValueError, match="needs"):
    snapshot.load(path, other)
  # same shapes, another run: told apart by the stored identity
  ident = snapshot.run_identity(CFG, tp, opt, "copy_last", 0, 8, L)
  snapshot.save(path, state, {"history": {}, "run": ident})
  snapshot.load(path, state_lib.init_state(CFG, tp, opt, 0), ident)
  with pytest.raises(ValueError, match="task"):
    snapshot.load(path, state_lib.init_state(CFG, tp, opt, 0), {**ident, "task": "count_ones"})


def test_snapshot_keeps_fp8_bits(tmp_path):
  """ml_dtypes' fp8 types (numpy kind 'f', user-defined) round-trip as raw bits too."""
  for dt in (ml_dtypes.float8_e5m2, ml_dtypes.float8_e4m3fn, ml_dtypes.bfloat16):
    w = jnp.asarray(np.linspace(-3, 3, 12).astype(dt))
    state = state_lib.TrainState(jnp.zeros((), jnp.int32), {"w": w}, ())
    path = str(tmp_path / "f.npz")
    snapshot.save(path, state, {})
    back, _ = snapshot.load(path, state)
    same_bits(back, state)


def test_restore_drops_a_killed_write_and_checks_the_run(tmp_path):
  """restore: no snapshot -> None; the temporary file a killed write left beside it is
  removed either way; a snapshot of another run is refused."""
  from collapse_jax import results
  state = state_lib.TrainState(jnp.zeros((), jnp.int32), {"w": jnp.arange(3.0)}, ())
  path = str(tmp_path / snapshot.FILE)
  leftover = tmp_path / (results.TMP_PREFIX + "x" + snapshot.FILE)
  leftover.write_bytes(b"half")
  assert snapshot.restore(path, state, {"seed": 0}) is None and not leftover.exists()
  snapshot.save(path, state, {"history": {}, "run": {"seed": 0}})
  leftover.write_bytes(b"half")
  back, meta = snapshot.restore(path, state, {"seed": 0})
  same_bits(back, state)
  assert meta["run"] == {"seed": 0} and not leftover.exists()
  with pytest.raises(ValueError, match="seed"):
    snapshot.restore(path, state, {"seed": 1})
