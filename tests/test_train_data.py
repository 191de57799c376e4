"""collapse_jax.train.data: the batches answer their task, are left-padded, cover every count,
and depend only on (seed, step)."""
import numpy as np
import pytest

from collapse_jax.train import data

L = 4


@pytest.mark.parametrize("task", data.TRAIN_TASKS)
def test_batches_answer_their_task_and_are_left_padded(task):
  rng = np.random.default_rng(0)
  b = data.make_batch(task, rng, [1, 3, 6, 6], width=9)
  for i, n in enumerate(b.n):
    real = b.tokens[i][b.valid[i]]
    assert b.valid[i].sum() == n + 1 and not b.valid[i][:9 - n - 1].any()  # pads on the left
    np.testing.assert_array_equal(b.positions[i][b.valid[i]], np.arange(n + 1))
    assert real[0] == data.BOS and set(real[1:]) <= {data.ZERO, data.ONE}
    digits = real[1:] - data.ZERO
    assert b.count[i] == digits.sum()
    want = {"count_ones": data.COUNT0 + digits.sum(), "copy_first": data.ZERO + digits[0],
            "copy_last": data.ZERO + digits[-1]}[task]
    assert b.answer[i] == want


def test_counts_cover_zero_to_n_and_batches_depend_only_on_seed_and_step():
  b = data.make_batch("count_ones", np.random.default_rng(1), np.full(400, 5))
  assert set(b.count.tolist()) == set(range(6))  # c uniform in 0..n
  one, again = data.train_batch("count_ones", 3, 7, 8, L), data.train_batch("count_ones", 3, 7, 8, L)
  for x, y in zip(one, again):
    np.testing.assert_array_equal(x, y)
  other = data.train_batch("count_ones", 3, 8, 8, L)
  assert not np.array_equal(one.tokens, other.tokens)
  assert one.tokens.shape == (8, L + 1) and 1 <= one.n.min() and one.n.max() <= L


def test_length_batches_and_unknown_tasks():
  """Evaluation batches: exactly n digits, padded to a power-of-two width, one per (seed,
  stream, n); the streams differ. An unknown task is a one-line ValueError."""
  b = data.length_batch("copy_last", 0, data.ACCURACY, 20, 3)
  assert b.tokens.shape == (3, 32) == (3, data.eval_width(20)) and set(b.n.tolist()) == {20}
  np.testing.assert_array_equal(b.tokens, data.length_batch("copy_last", 0, data.ACCURACY, 20,
                                                            3).tokens)
  assert not np.array_equal(b.tokens, data.length_batch("copy_last", 0, data.GRAD_NORM, 20,
                                                        3).tokens)
  np.testing.assert_array_equal(data.ones_sequence(3), [data.BOS] + [data.ONE] * 3)
  with pytest.raises(ValueError, match="unknown training task"):
    data.make_batch("count_words", np.random.default_rng(0), [2])
