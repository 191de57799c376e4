"""Sequence families for the collapse sweep (Theorem 4.2 / B.3).

Each family defines, for every swept length n, a pair (A_n, B_n) whose last-token
representations are compared:
  * ``repeat``:            A_n = a^n,                     B_n = a^(n+1)
  * ``prefix_repeat``:     A_n = p_1..p_P a^(n-P),        B_n = p_1..p_P a^(n+1-P)   (n > P)
  * ``stream_repeat_last``: A_n = x_1..x_{n-1} a,          B_n = x_1..x_{n-1} a a
In every family A_n is a prefix of B_n, so B_n's causal pass holds A_n's last token at row
n-1. For the two prefix families every B_n is also a prefix of ONE sequence (``tokens``)
of length max(n)+1, so one causal pass serves every n; ``stream_repeat_last`` needs a
different sequence per n (built by ``stream_pair_tokens``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

FAMILIES = ("repeat", "prefix_repeat", "stream_repeat_last")


@dataclasses.dataclass(frozen=True)
class Family:
  """A materialised family for one seed.

  Attributes:
    name: family name.
    token: the repeated token a.
    tokens: int32 [T] — prefix families: the shared sequence (T = max_n + 1);
      stream_repeat_last: the random stream x_1..x_{T} (T = max_n - 1, at least 1).
    min_length: smallest valid n.
  """
  name: str
  token: int
  tokens: np.ndarray
  min_length: int

  @property
  def shared_prefix(self) -> bool:
    return self.name != "stream_repeat_last"


def make_family(name: str, max_length: int, *, seed: int, vocab_size: int, token: int = 1,
                prefix_len: int = 16, prefix_ids=None, alphabet=None) -> Family:
  """Build a family's token arrays for lengths up to ``max_length`` (largest n).

  ``alphabet``: token ids random tokens are drawn from (default: the whole vocabulary).
  ``stream_repeat_last`` with ``prefix_ids``: the stream starts with those fixed ids (e.g. a
  prompt) followed by random tokens, so n counts the prompt too (min n = len(prefix) + 1)."""
  if name not in FAMILIES:
    raise ValueError(f"unknown family {name!r}; valid: {', '.join(FAMILIES)}")
  if not 0 <= token < vocab_size:
    raise ValueError(f"token {token} outside the vocabulary [0, {vocab_size})")
  rng = np.random.default_rng(seed)
  pool = np.arange(vocab_size) if alphabet is None else np.asarray(alphabet, np.int64)
  if pool.size == 0 or pool.min() < 0 or pool.max() >= vocab_size:
    raise ValueError(f"alphabet ids must lie in [0, {vocab_size})")
  draw = lambda k: rng.choice(pool, size=k).astype(np.int32)
  if name == "repeat":
    return Family(name, token, np.full(max_length + 1, token, np.int32), 1)
  if name == "prefix_repeat":
    prefix = np.asarray(prefix_ids, np.int32) if prefix_ids is not None else draw(prefix_len)
    if prefix.size and (prefix.min() < 0 or prefix.max() >= vocab_size):
      raise ValueError(f"prefix ids must lie in [0, {vocab_size})")
    if max_length <= prefix.size:
      raise ValueError(f"max length {max_length} must exceed the prefix length {prefix.size}")
    seq = np.concatenate([prefix, np.full(max_length + 1 - prefix.size, token, np.int32)])
    return Family(name, token, seq, prefix.size + 1)
  prefix = np.asarray(prefix_ids if prefix_ids is not None else [], np.int32)
  if prefix.size and (prefix.min() < 0 or prefix.max() >= vocab_size):
    raise ValueError(f"prefix ids must lie in [0, {vocab_size})")
  if max_length <= prefix.size:
    raise ValueError(f"max length {max_length} must exceed the prefix length {prefix.size}")
  stream = np.concatenate([prefix, draw(max(max_length - 1 - prefix.size, 1))])
  return Family(name, token, stream, prefix.size + 1)


def check_lengths(family: Family, lengths) -> np.ndarray:
  lengths = np.asarray(lengths, np.int64)
  if lengths.size == 0 or np.any(np.diff(lengths) <= 0):
    raise ValueError("lengths must be a non-empty strictly increasing sequence")
  if lengths[0] < family.min_length:
    raise ValueError(f"family {family.name!r} needs n >= {family.min_length}, got {lengths[0]}")
  return lengths.astype(np.int32)


def stream_pair_tokens(stream, token: int, n, total: int, pad: int = 0):
  """B_n = x_1..x_{n-1} a a padded to ``total`` tokens (works on numpy or jax arrays):
  returns int [total]. ``n`` may be traced."""
  import jax.numpy as jnp
  i = jnp.arange(total)
  x = jnp.take(jnp.asarray(stream), jnp.minimum(i, jnp.asarray(stream).shape[0] - 1))
  return jnp.where(i < n - 1, x, jnp.where(i <= n, token, pad)).astype(jnp.int32)


def parse_lengths(spec: str, max_len: int | None = None) -> np.ndarray:
  """Grid spec -> sorted unique int array.
  'a:b' (every n in [a, b]), 'a:b:s' (step s), 'log:a:b:k' (k log-spaced, rounded,
  deduplicated), or a comma list '1,2,8'. ``max_len`` caps the grid when given."""
  spec = spec.strip()
  try:
    if spec.startswith("log:"):
      _, a, b, k = spec.split(":")
      if int(k) < 1 or int(a) < 1 or int(b) < int(a):
        raise ValueError("need 1 <= a <= b and count >= 1")
      grid = np.unique(np.round(np.geomspace(int(a), int(b), int(k))).astype(np.int64))
    elif ":" in spec:
      parts = [int(p) for p in spec.split(":")]
      a, b = parts[0], parts[1]
      step = parts[2] if len(parts) > 2 else 1
      if step < 1 or len(parts) > 3:
        raise ValueError("step must be >= 1")
      grid = np.arange(a, b + 1, step, dtype=np.int64)
    else:
      grid = np.unique(np.asarray([int(p) for p in spec.split(",") if p], np.int64))
  except ValueError as e:
    raise ValueError(f"bad length grid {spec!r} ({e}): use 'a:b', 'a:b:step', "
                     "'log:a:b:count' or a comma list") from e
  if grid.size == 0 or grid[0] < 1:
    raise ValueError(f"length grid {spec!r} must be non-empty with every n >= 1")
  if max_len is not None:
    grid = grid[grid <= max_len]
    if grid.size == 0:
      raise ValueError(f"length grid {spec!r} has no n <= max_len={max_len}")
  return grid
