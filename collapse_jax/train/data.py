"""The training tasks' sequences and batches, drawn on the host (words: collapse_jax/train).

Every batch comes from ``numpy.random.default_rng`` seeded by (seed, stream, index), so it
depends on nothing but those numbers: a run resumed from a snapshot at step s sees the same
batches as an uninterrupted one. The streams:

  training step s           [seed, s]                    (train_batch)
  in-distribution check     [seed, IN_DISTRIBUTION, s]   (the loop's periodic accuracy)
  accuracy at length n      [seed, ACCURACY, n]          (measure.evaluate)
  gradient norm at n        [seed, GRAD_NORM, n]         (measure.grad_norm_by_length)

Sequences of a batch are left-padded to one width; pads are BOS tokens at position 0 that no
query may attend to (as in generate.prefill), so the real tokens keep positions 0..n.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

TRAIN_TASKS = ("count_ones", "copy_first", "copy_last")
BOS, ZERO, ONE, COUNT0 = 0, 1, 2, 3
ACCURACY, IN_DISTRIBUTION, GRAD_NORM = 2**31 - 1, 2**31 - 2, 2**31 - 3  # rng streams


def vocab_size(max_count: int) -> int:
  """BOS, ZERO, ONE and the count tokens 0..max_count."""
  return COUNT0 + max_count + 1


def check_task(task: str) -> str:
  """``task`` if it is a training task, else a one-line ValueError."""
  if task not in TRAIN_TASKS:
    raise ValueError(f"unknown training task {task!r}; valid: {', '.join(TRAIN_TASKS)}")
  return task


class Batch(NamedTuple):
  """A left-padded batch of B sequences, W tokens wide: tokens_BW / positions_BW int32,
  valid_BW bool (False = pad), answer_B int32 (the target token), n_B int32 (digits),
  count_B int32 (ones)."""
  tokens: np.ndarray
  positions: np.ndarray
  valid: np.ndarray
  answer: np.ndarray
  n: np.ndarray
  count: np.ndarray


def ones_sequence(c: int) -> np.ndarray:
  """[BOS, 1^c] int32 [c + 1]: Cor. B.10's sequence of c ones."""
  return np.concatenate([[BOS], np.full(c, ONE)]).astype(np.int32)


def sequences(task: str, rng: np.random.Generator, ns) -> tuple[list[np.ndarray], np.ndarray,
                                                                 np.ndarray]:
  """One random sequence per n in ``ns``: (sequences [BOS, x_1..x_n] as int32 [n + 1] arrays,
  answer_B int32, count_B int32). count_ones: the count c is uniform in 0..n and the c ones
  are at uniformly random places (so every count is as likely at every n); copy tasks: the
  digits are fair coin flips."""
  check_task(task)
  seqs, answers, counts = [], [], []
  for n in ns:
    n = int(n)
    if task == "count_ones":
      c = int(rng.integers(0, n + 1))
      bits_n = np.zeros(n, np.int32)
      bits_n[rng.permutation(n)[:c]] = 1
    else:
      bits_n = rng.integers(0, 2, n).astype(np.int32)
      c = int(bits_n.sum())
    x = np.concatenate([[BOS], ZERO + bits_n]).astype(np.int32)
    ans = {"count_ones": COUNT0 + c, "copy_first": ZERO + bits_n[0],
           "copy_last": ZERO + bits_n[-1]}[task]
    seqs.append(x); answers.append(ans); counts.append(c)
  return seqs, np.asarray(answers, np.int32), np.asarray(counts, np.int32)


def pad_left(seqs: Sequence[np.ndarray], width: int) -> tuple[np.ndarray, ...]:
  """Left-pad to ``width``: (tokens_BW, positions_BW, valid_BW). Pads are BOS tokens at
  position 0 that no query may attend to."""
  B = len(seqs)
  tokens = np.full((B, width), BOS, np.int32)
  positions = np.zeros((B, width), np.int32)
  valid = np.zeros((B, width), bool)
  for i, s in enumerate(seqs):
    if len(s) > width:
      raise ValueError(f"a sequence of {len(s)} tokens does not fit width {width}")
    tokens[i, width - len(s):] = s
    positions[i, width - len(s):] = np.arange(len(s))
    valid[i, width - len(s):] = True
  return tokens, positions, valid


def make_batch(task: str, rng: np.random.Generator, ns, width: int | None = None) -> Batch:
  """A batch with one sequence per n in ``ns`` (width default: the longest, 1 + max n)."""
  ns = np.asarray(ns, np.int32)
  seqs, answer, count = sequences(task, rng, ns)
  tokens, positions, valid = pad_left(seqs, width or int(ns.max()) + 1)
  return Batch(tokens, positions, valid, answer, ns, count)


def train_batch(task: str, seed: int, step: int, batch_size: int, l_train: int) -> Batch:
  """The batch of training step ``step``: n uniform in 1..l_train, width l_train + 1, from
  ``default_rng([seed, step])`` (the same batch however the run was interrupted)."""
  rng = np.random.default_rng([seed, step])
  return make_batch(task, rng, rng.integers(1, l_train + 1, batch_size), l_train + 1)


def in_distribution_batch(task: str, seed: int, step: int, samples: int, l_train: int
                          ) -> Batch:
  """The loop's check after step ``step``: ``samples`` fresh sequences, n uniform in
  1..l_train, from the IN_DISTRIBUTION stream."""
  rng = np.random.default_rng([seed, IN_DISTRIBUTION, step])
  return make_batch(task, rng, rng.integers(1, l_train + 1, samples), l_train + 1)


def eval_width(n: int) -> int:
  """The padded width of an n-digit evaluation batch: the power of two >= n + 1, at least
  16 (so an evaluation grid compiles a few programs, not one per n)."""
  return max(16, 1 << int(n).bit_length())


def length_batch(task: str, seed: int, stream: int, n: int, samples: int) -> Batch:
  """``samples`` fresh sequences of exactly n digits from ``default_rng([seed, stream, n])``,
  left-padded to :func:`eval_width` (n)."""
  rng = np.random.default_rng([seed, stream, int(n)])
  return make_batch(task, rng, np.full(samples, int(n), np.int32), eval_width(int(n)))
