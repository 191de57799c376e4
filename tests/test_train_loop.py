"""collapse_jax.train.loop: determinism, and a run stopped mid-training and resumed from its
snapshot equals the uninterrupted run bit for bit."""
import numpy as np
import pytest

from collapse_jax.train import loop, snapshot
from collapse_jax.train import state as state_lib

try:
  from reference import bits
  from train_helpers import CFG, L, leaves, same_bits, small_opt
except ImportError:
  from tests.reference import bits
  from tests.train_helpers import CFG, L, leaves, same_bits, small_opt


def test_same_seed_same_parameters_and_resume_equals_an_uninterrupted_run(tmp_path):
  tp, opt = state_lib.train_precision("bfloat16"), small_opt(steps=12)
  kw = dict(seed=3, batch_size=8, l_train=L, eval_every=4, eval_samples=8, log=lambda *_: None)
  a, ha = loop.train(CFG, tp, opt, "count_ones", **kw)
  b, _ = loop.train(CFG, tp, opt, "count_ones", **kw)
  same_bits(a.params, b.params)
  c, _ = loop.train(CFG, tp, opt, "count_ones", **{**kw, "seed": 4})
  assert not all(np.array_equal(bits(x), bits(y)) for x, y in zip(leaves(a.params),
                                                                  leaves(c.params)))
  # interrupted by should_stop after 5 steps (a snapshot there), then resumed from the file
  path = str(tmp_path / snapshot.FILE)
  asked = iter(range(100))
  part, hp = loop.train(CFG, tp, opt, "count_ones", snapshot_path=path,
                        should_stop=lambda: next(asked) >= 5, **kw)
  assert hp["stopped_at"] == 5 and int(part.step) == 5
  state, meta = snapshot.load(path, state_lib.init_state(CFG, tp, opt, 0))
  assert int(state.step) == 5 and meta["history"]["steps"] == list(range(5))
  with pytest.raises(ValueError, match="seed"):  # another run's snapshot is refused
    loop.train(CFG, tp, opt, "count_ones", snapshot_path=path, **{**kw, "seed": 4})
  lines = []
  done, hd = loop.train(CFG, tp, opt, "count_ones", snapshot_path=path,
                        **{**kw, "log": lines.append})
  assert lines[0] == f"[bfloat16] resuming at step 5 from {path}"
  same_bits(done, a)
  assert hd["steps"] == list(range(12)) and hd["loss"] == ha["loss"]
