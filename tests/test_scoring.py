"""collapse_jax.scoring: continuation log-probs from a prefilled prompt's cache equal the
log-softmax of uncached forwards (tolerance per dtype in the test: the continuation rows run
off the length-invariant schedule)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from collapse_jax import scoring
from test_generate import _fresh_logits, _setup


@pytest.mark.slow
@pytest.mark.parametrize("name,dtype", [("llama-gqa", "bfloat16"), ("gemma3-style", "float32")])
def test_scores_equal_uncached_log_softmax(name, dtype):
  cfg, pol, params = _setup(name, dtype)
  prompt = list(np.random.default_rng(2).integers(0, 50, size=13))
  conts = [[], [3], [4, 5], [7, 7, 7], [1, 2, 3, 4]]
  nxt_ids = [0, 1, 2, 3]
  ctx = scoring.context(cfg, pol, params, prompt)
  tok, nxt, rest = scoring.score(cfg, pol, params, ctx, conts, nxt_ids, pad_to=4)
  tol = 1e-5 if dtype == "float32" else 5e-2  # in log-probability (nats)
  for i, c in enumerate(conts):
    want_tok = 0.0
    for t in range(len(c)):
      want_tok += jax.nn.log_softmax(_fresh_logits(cfg, pol, params, prompt + c[:t]))[c[t]]
    lp = np.asarray(jax.nn.log_softmax(_fresh_logits(cfg, pol, params, prompt + c)))
    np.testing.assert_allclose(tok[i], want_tok, atol=tol * max(1, len(c)))
    np.testing.assert_allclose(nxt[i], lp[nxt_ids], atol=tol)
    np.testing.assert_allclose(rest[i], np.log(np.exp(np.delete(lp, nxt_ids)).sum()), atol=tol)
