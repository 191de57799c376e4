"""Pair sets: the pairs (A_n, B_n) whose last-token representations are compared.

Vocabulary (defined here, used by every module, experiment and record):

  n              the swept length. Synthetic families: the number of tokens of A_n.
                 Figure-5 prompt settings (prompts.py): the number of DIGIT tokens of A_n.
  A_n, B_n       the compared pair of token sequences. B_n holds one more repeated token
                 than A_n (Theorem 4.2 / B.3: B_n = A_n + [a]).
  compared token the token whose representations are compared: the last token of A_n and
                 the last token of B_n. ``lengths_ab(ns)`` gives len(A_n) and len(B_n).
  token (a)      the repeated token.
  stream         int32 [T]: the one array of token ids an engine feeds for every n.
  one pass       ``one_pass``: every B_n (so every A_n) is a prefix of the stream, so ONE
                 causal pass holds every pair; ``rows(ns)`` [2, S] gives the rows of that pass
                 holding A_n's and B_n's compared token (len(A_n) - 1 and len(B_n) - 1).
  appended       ``appended``: A_n = stream[:len(A_n) - 1] + [a] and B_n = A_n + [a], so an
                 engine can run the stream once and append [a, a] per n (kv_cache), or pad
                 one B_n per n (masked). False when B_n is not A_n plus a (separators).
  copy           where B_n's extra token sits: ``"token"`` (the token a again, at the next
                 position) or ``"vector"`` (A_n's last input vector again, positional encoding
                 included: the copy keeps A_n's last position; Appendix C.3).

A pair set is a :class:`PairSet`. Synthetic families (:func:`make_family`) and the paper's
Figure-5 prompt settings (``prompts.make_setting``) both implement it; the engines
(engines.py) read only this interface:
  * ``repeat``:             A_n = a^n,                   B_n = a^(n+1)
  * ``prefix_repeat``:      A_n = p_1..p_P a^(n-P),      B_n = p_1..p_P a^(n+1-P)  (n > P)
  * ``stream_repeat_last``: A_n = x_1..x_{n-1} a,        B_n = x_1..x_{n-1} a a
The two prefix families are one-pass and appended; ``stream_repeat_last`` is appended only
(A_{n+1} = .. x_n a is not a prefix of B_n = .. a a unless x_n = a).
"""
from __future__ import annotations

import abc
import dataclasses

import numpy as np

from collapse_jax.config import check_token_ids

FAMILIES = ("repeat", "prefix_repeat", "stream_repeat_last")
COPIES = ("token", "vector")


class PairSet(abc.ABC):
  """The interface every pair set implements (see the module docstring for the words).

  Attributes (on every implementation): ``name``, ``token`` (a), ``one_pass``, ``appended``,
  ``copy`` ('token' or 'vector') and ``min_n`` (the smallest valid n)."""
  name: str
  token: int
  copy: str
  min_n: int

  @property
  @abc.abstractmethod
  def one_pass(self) -> bool:
    """Every B_n is a prefix of ``stream``: one causal pass holds every pair."""

  @property
  @abc.abstractmethod
  def appended(self) -> bool:
    """A_n = stream[:len(A_n)-1] + [a] and B_n = A_n + [a]."""

  @abc.abstractmethod
  def lengths_ab(self, ns) -> np.ndarray:
    """int [2, S]: len(A_n) and len(B_n) in tokens, per n."""

  @abc.abstractmethod
  def stream(self, max_n: int, min_tokens: int = 0) -> np.ndarray:
    """int32 [T]: the tokens an engine feeds for every n <= max_n. One-pass sets: a sequence
    whose prefixes are every B_n, at least ``min_tokens`` long (continuing the pattern);
    appended-only sets: x such that A_n = x[:len(A_n)-1] + [a]."""

  @abc.abstractmethod
  def pair_tokens(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(A_n, B_n) as int32 token arrays, each ending at its compared token."""

  def describe(self) -> dict:
    return {"name": self.name, "token": self.token, "copy": self.copy, "min_n": self.min_n,
            "one_pass": self.one_pass, "appended": self.appended}

  def check(self, ns) -> np.ndarray:
    """ns as int32 [S]; ValueError unless non-empty, strictly increasing and >= min_n."""
    ns = np.asarray(ns, np.int64)
    if ns.ndim != 1 or ns.size == 0 or np.any(np.diff(ns) <= 0):
      raise ValueError("lengths must be a non-empty strictly increasing sequence")
    if ns[0] < self.min_n:
      raise ValueError(f"pair set {self.name!r} needs n >= {self.min_n}, got {ns[0]}")
    return ns.astype(np.int32)

  def rows(self, ns) -> np.ndarray:
    """int32 [2, S]: rows of the one causal pass over ``stream`` holding A_n's and B_n's
    compared token."""
    if not self.one_pass:
      use = "the kv_cache, masked or exact engine" if self.appended else "the exact engine"
      raise ValueError(f"pair set {self.name!r} has no single shared sequence: no rows of one "
                       f"pass hold its pairs (use {use})")
    return (self.lengths_ab(ns) - 1).astype(np.int32)

  def positions(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of A_n's and B_n's tokens: 0..len-1, except that with ``copy='vector'``
    B_n's copy keeps A_n's last position."""
    la, lb = (int(v) for v in self.lengths_ab([n])[:, 0])
    pb = np.arange(lb, dtype=np.int32)
    if self.copy == "vector" and not self.appended:
      raise ValueError(f"pair set {self.name!r}: copy='vector' needs B_n = A_n + [a]")
    if self.copy == "vector":
      pb[-1] = la - 1
    return np.arange(la, dtype=np.int32), pb


@dataclasses.dataclass(frozen=True)
class Family(PairSet):
  """A synthetic family for one seed.

  Attributes:
    name: one of FAMILIES. token: a. copy: 'token' or 'vector'. min_n: smallest valid n.
    tokens: int32 [T]. Prefix families: the sequence of every B_n (T = max_n + 1);
      stream_repeat_last: the random stream x_1..x_T (T = max(max_n - 1, 1)).
  """
  name: str
  token: int
  tokens: np.ndarray
  min_n: int
  copy: str = "token"

  @property
  def one_pass(self) -> bool:
    return self.name != "stream_repeat_last"

  @property
  def appended(self) -> bool:
    return True

  def lengths_ab(self, ns) -> np.ndarray:
    ns = np.asarray(ns, np.int64)
    return np.stack([ns, ns + 1])

  def stream(self, max_n: int, min_tokens: int = 0) -> np.ndarray:
    if not self.one_pass:
      if self.tokens.shape[0] < max_n - 1:
        raise ValueError(f"{self.name} was built for n <= {self.tokens.shape[0] + 1}, not {max_n}")
      return self.tokens
    need = max(max_n + 1, min_tokens)  # a prefix family continues with a
    extra = np.full(max(need - self.tokens.shape[0], 0), self.token, np.int32)
    return np.concatenate([self.tokens, extra]) if extra.size else self.tokens

  def pair_tokens(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    self.check([n])
    if self.one_pass:
      seq = self.stream(n)
      return seq[:n].copy(), seq[:n + 1].copy()
    if n - 1 > self.tokens.shape[0]:
      raise ValueError(f"{self.name} was built for n <= {self.tokens.shape[0] + 1}, not {n}")
    a = np.concatenate([self.tokens[:n - 1], [self.token]]).astype(np.int32)
    return a, np.concatenate([a, [self.token]]).astype(np.int32)

  def describe(self) -> dict:
    return {**super().describe(), "tokens": self.tokens}


def family_lengths(name: str, lengths, *, prefix_len: int = 16, prefix_ids=None,
                   log=None) -> np.ndarray:
  """The n of ``lengths`` that family ``name`` can pair: prefix_repeat needs n > its prefix
  (the smaller n are dropped, with a ``log`` line); ValueError (one line) when none is
  left."""
  lengths = np.asarray(lengths)
  if name != "prefix_repeat":
    return lengths
  start = (len(prefix_ids) if prefix_ids else prefix_len) + 1
  kept = lengths[lengths >= start]
  if kept.size == 0:
    raise ValueError(f"no swept n >= {start} (prefix_repeat needs n > prefix length)")
  if kept.size < lengths.size and log is not None:
    log(f"prefix_repeat: dropped n < {start} from the grid (n must exceed the prefix)")
  return kept


def make_family(name: str, max_n: int, *, seed: int, vocab_size: int, token: int = 1,
                prefix_len: int = 16, prefix_ids=None, alphabet=None,
                copy: str = "token") -> Family:
  """Build a family's tokens for n up to ``max_n``.

  ``alphabet``: token ids random tokens are drawn from (default: the whole vocabulary).
  ``stream_repeat_last`` with ``prefix_ids``: the stream starts with those fixed ids (e.g. a
  prompt) followed by random tokens, so n counts the prompt too (min n = len(prefix) + 1)."""
  if name not in FAMILIES:
    raise ValueError(f"unknown family {name!r}; valid: {', '.join(FAMILIES)}")
  if copy not in COPIES:
    raise ValueError(f"copy must be one of {', '.join(COPIES)}, got {copy!r}")
  check_token_ids([token], vocab_size, "the repeated token")
  rng = np.random.default_rng(seed)
  pool = np.arange(vocab_size) if alphabet is None else np.asarray(alphabet, np.int64)
  if pool.size == 0 or pool.min() < 0 or pool.max() >= vocab_size:
    raise ValueError(f"alphabet ids must lie in [0, {vocab_size})")
  draw = lambda k: rng.choice(pool, size=k).astype(np.int32)
  if name == "repeat":
    return Family(name, token, np.full(max_n + 1, token, np.int32), 1, copy)
  if name == "prefix_repeat" and prefix_ids is None:
    prefix = draw(prefix_len)
  else:
    prefix = np.asarray(prefix_ids if prefix_ids is not None else [], np.int32)
  if prefix.size:
    check_token_ids(prefix, vocab_size, "prefix ids")
  if max_n <= prefix.size:
    raise ValueError(f"max length {max_n} must exceed the prefix length {prefix.size}")
  if name == "prefix_repeat":
    seq = np.concatenate([prefix, np.full(max_n + 1 - prefix.size, token, np.int32)])
    return Family(name, token, seq, prefix.size + 1, copy)
  stream = np.concatenate([prefix, draw(max(max_n - 1 - prefix.size, 1))])
  return Family(name, token, stream, prefix.size + 1, copy)


def appended_pair_tokens(stream, token: int, len_a, total: int, pad: int = 0):
  """B_n = stream[:len_a - 1] + [a, a] padded to ``total`` tokens (numpy or jax arrays):
  int32 [total]. ``len_a`` = len(A_n) may be traced."""
  import jax.numpy as jnp
  i = jnp.arange(total)
  x = jnp.take(jnp.asarray(stream), jnp.minimum(i, jnp.asarray(stream).shape[0] - 1))
  return jnp.where(i < len_a - 1, x, jnp.where(i <= len_a, token, pad)).astype(jnp.int32)


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
