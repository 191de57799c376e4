"""Pair sets (collapse_jax/pairs.py): synthetic families, the PairSet interface, length grids."""
import numpy as np
import pytest

from collapse_jax import pairs



def test_repeat_and_prefix_are_prefix_closed():
  f = pairs.make_family("repeat", 10, seed=0, vocab_size=8, token=3)
  assert f.tokens.shape == (11,) and set(f.tokens) == {3} and f.min_n == 1
  p = pairs.make_family("prefix_repeat", 20, seed=1, vocab_size=8, token=3, prefix_len=5)
  assert p.min_n == 6 and np.all(p.tokens[5:] == 3) and p.tokens.shape == (21,)
  g = pairs.make_family("prefix_repeat", 20, seed=1, vocab_size=8, prefix_ids=[4, 5])
  np.testing.assert_array_equal(g.tokens[:2], [4, 5])


def test_stream_pairs_match_theorem_b3():
  f = pairs.make_family("stream_repeat_last", 12, seed=2, vocab_size=50, token=7)
  x = f.tokens
  for n in (1, 2, 5, 12):
    b = np.asarray(pairs.appended_pair_tokens(x, 7, n, 13))
    np.testing.assert_array_equal(b[: n - 1], x[: n - 1])
    np.testing.assert_array_equal(b[n - 1: n + 1], [7, 7])
    assert np.all(b[n + 1:] == 0)


def test_errors_name_valid_choices():
  with pytest.raises(ValueError, match="repeat, prefix_repeat, stream_repeat_last"):
    pairs.make_family("ones", 5, seed=0, vocab_size=4)
  with pytest.raises(ValueError, match="exceed the prefix"):
    pairs.make_family("prefix_repeat", 4, seed=0, vocab_size=4, prefix_len=8)
  with pytest.raises(ValueError, match="n >= 9"):
    pairs.make_family("prefix_repeat", 20, seed=0, vocab_size=4, prefix_len=8).check([3, 9])


def test_parse_lengths():
  np.testing.assert_array_equal(pairs.parse_lengths("1:5"), [1, 2, 3, 4, 5])
  np.testing.assert_array_equal(pairs.parse_lengths("2:10:4"), [2, 6, 10])
  np.testing.assert_array_equal(pairs.parse_lengths("8,1,2,2"), [1, 2, 8])
  g = pairs.parse_lengths("log:1:65536:200")
  assert g[0] == 1 and g[-1] == 65536 and np.all(np.diff(g) > 0) and len(g) <= 200
  np.testing.assert_array_equal(pairs.parse_lengths("1:100", max_len=3), [1, 2, 3])
  for bad in ("a:b", "0:4", "log:1:2"):
    with pytest.raises(ValueError):
      pairs.parse_lengths(bad)


def test_alphabet_and_prompt_prefix_for_stream():
  f = pairs.make_family("stream_repeat_last", 40, seed=3, vocab_size=100, token=7,
                      prefix_ids=[50, 51, 52], alphabet=[10, 11, 12])
  assert f.min_n == 4
  np.testing.assert_array_equal(f.tokens[:3], [50, 51, 52])
  assert set(f.tokens[3:]) <= {10, 11, 12} and f.tokens.shape == (39,)
  with pytest.raises(ValueError, match="alphabet"):
    pairs.make_family("repeat", 4, seed=0, vocab_size=8, alphabet=[9])


@pytest.mark.parametrize("name", pairs.FAMILIES)
def test_family_interface_is_consistent_with_its_pairs(name):
  """pair_tokens agrees with stream/rows (one-pass) and with the appended form."""
  f = pairs.make_family(name, 30, seed=4, vocab_size=9, token=2, prefix_len=3)
  ns = f.check(np.arange(f.min_n, 31, 3))
  la, lb = f.lengths_ab(ns)
  stream = f.stream(30)
  for i, n in enumerate(ns):
    a, b = f.pair_tokens(int(n))
    assert (len(a), len(b)) == (la[i], lb[i]) and a[-1] == b[-1] == b[-2] == 2
    np.testing.assert_array_equal(b[:-1], a)  # appended: B_n = A_n + [a]
    np.testing.assert_array_equal(a[:-1], stream[:len(a) - 1])
    if f.one_pass:
      np.testing.assert_array_equal(b, stream[:len(b)])
  if f.one_pass:
    np.testing.assert_array_equal(f.rows(ns), np.stack([la - 1, lb - 1]))
    assert len(f.stream(30, min_tokens=50)) == 50 and np.all(f.stream(30, 50)[31:] == 2)
  else:
    with pytest.raises(ValueError, match="no single shared sequence"):
      f.rows(ns)


def test_copy_vector_keeps_the_last_position():
  f = pairs.make_family("stream_repeat_last", 10, seed=0, vocab_size=9, copy="vector")
  pa, pb = f.positions(6)
  np.testing.assert_array_equal(pa, np.arange(6))
  np.testing.assert_array_equal(pb, [0, 1, 2, 3, 4, 5, 5])
  with pytest.raises(ValueError, match="copy must be one of token, vector"):
    pairs.make_family("repeat", 10, seed=0, vocab_size=9, copy="pe")
