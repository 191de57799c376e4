"""Shared by the tests of collapse_jax.train (tests/test_train_*.py): the tiny model, the
optimizer settings and an exact comparison of two pytrees."""
import jax
import numpy as np

from collapse_jax import config
from collapse_jax.train import data
from collapse_jax.train import state as state_lib

try:
  from reference import bits
except ImportError:
  from tests.reference import bits

CFG = config.DecoderConfig(num_layers=1, d_model=16, num_heads=2, vocab_size=data.vocab_size(8),
                           max_len=300, norm="rmsnorm")
L = 4
PRECISIONS = list(state_lib.TRAIN_PRECISIONS)


def small_opt(steps=20, **kw):
  return state_lib.Optimizer(steps=steps, warmup=2, **kw)


def leaves(tree):
  return jax.tree_util.tree_leaves(tree)


def same_bits(a, b):
  la, lb = leaves(a), leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(bits(x) if x.dtype.kind in "fV" else x,
                                  bits(y) if y.dtype.kind in "fV" else y)
