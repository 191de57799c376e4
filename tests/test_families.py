"""Sequence families and length grids."""
import numpy as np
import pytest

from collapse_jax import families as fam


def test_repeat_and_prefix_are_prefix_closed():
  f = fam.make_family("repeat", 10, seed=0, vocab_size=8, token=3)
  assert f.tokens.shape == (11,) and set(f.tokens) == {3} and f.min_length == 1
  p = fam.make_family("prefix_repeat", 20, seed=1, vocab_size=8, token=3, prefix_len=5)
  assert p.min_length == 6 and np.all(p.tokens[5:] == 3) and p.tokens.shape == (21,)
  g = fam.make_family("prefix_repeat", 20, seed=1, vocab_size=8, prefix_ids=[4, 5])
  np.testing.assert_array_equal(g.tokens[:2], [4, 5])


def test_stream_pairs_match_theorem_b3():
  f = fam.make_family("stream_repeat_last", 12, seed=2, vocab_size=50, token=7)
  x = f.tokens
  for n in (1, 2, 5, 12):
    b = np.asarray(fam.stream_pair_tokens(x, 7, n, 13))
    np.testing.assert_array_equal(b[: n - 1], x[: n - 1])
    np.testing.assert_array_equal(b[n - 1: n + 1], [7, 7])
    assert np.all(b[n + 1:] == 0)


def test_errors_name_valid_choices():
  with pytest.raises(ValueError, match="repeat, prefix_repeat, stream_repeat_last"):
    fam.make_family("ones", 5, seed=0, vocab_size=4)
  with pytest.raises(ValueError, match="exceed the prefix"):
    fam.make_family("prefix_repeat", 4, seed=0, vocab_size=4, prefix_len=8)
  with pytest.raises(ValueError, match="n >= 9"):
    fam.check_lengths(fam.make_family("prefix_repeat", 20, seed=0, vocab_size=4, prefix_len=8), [3, 9])


def test_parse_lengths():
  np.testing.assert_array_equal(fam.parse_lengths("1:5"), [1, 2, 3, 4, 5])
  np.testing.assert_array_equal(fam.parse_lengths("2:10:4"), [2, 6, 10])
  np.testing.assert_array_equal(fam.parse_lengths("8,1,2,2"), [1, 2, 8])
  g = fam.parse_lengths("log:1:65536:200")
  assert g[0] == 1 and g[-1] == 65536 and np.all(np.diff(g) > 0) and len(g) <= 200
  np.testing.assert_array_equal(fam.parse_lengths("1:100", max_len=3), [1, 2, 3])
  for bad in ("a:b", "0:4", "log:1:2"):
    with pytest.raises(ValueError):
      fam.parse_lengths(bad)


def test_alphabet_and_prompt_prefix_for_stream():
  f = fam.make_family("stream_repeat_last", 40, seed=3, vocab_size=100, token=7,
                      prefix_ids=[50, 51, 52], alphabet=[10, 11, 12])
  assert f.min_length == 4
  np.testing.assert_array_equal(f.tokens[:3], [50, 51, 52])
  assert set(f.tokens[3:]) <= {10, 11, 12} and f.tokens.shape == (39,)
  with pytest.raises(ValueError, match="alphabet"):
    fam.make_family("repeat", 4, seed=0, vocab_size=8, alphabet=[9])
