r"""Greedy decoding speed: collapse_jax.generate vs HF transformers' ``generate``, same run.

  python -m experiments.bench_generate                          # SmolLM2, prompts 100 and 2000
  python -m experiments.bench_generate --prompt_lens=100 --new_tokens=16 --dtype=float32,bfloat16

For each prompt length N the prompt is SmolLM2's chat-templated count-ones question with as
many ones as make exactly N tokens. Both sides decode ``--new_tokens`` greedy tokens from it
(no stop token on either side, so both run every step), on the CPU, in float32 (HF: torch, loading the same
GGUF file itself). Each side runs once to warm up (our compiles, torch's first-call costs),
then ``--repeats`` timed runs; the best is reported. Printed per N: prefill seconds, decode
tokens/s, end-to-end tokens/s (new tokens / (prefill + decode)) for each side, the ratio
ours/HF of end-to-end tokens/s, our compile seconds, and whether the tokens are identical.
Needs the `hf` extra (torch, transformers) for the HF side; --nohf times ours only.
"""
from __future__ import annotations

import functools
import time

from absl import app, flags

import collapse_jax  # noqa: F401  (applies the XLA guards before jax starts)
from collapse_jax import checkpoints, cli, generate, prompts, xla_env

F = flags.FLAGS
cli.define(dtype="float32", model="smollm2")
flags.DEFINE_list("prompt_lens", ["100", "2000"], "prompt lengths in tokens")
flags.DEFINE_integer("new_tokens", 32, "greedy tokens decoded per prompt")
flags.DEFINE_integer("repeats", 2, "timed runs per side (the best is reported)")
flags.DEFINE_bool("hf", True, "also time HF transformers' generate (needs torch/transformers)")


def prompt_of_length(ckpt, n_tokens: int) -> list:
  """The count-ones prompt (the model's prompt format) with exactly ``n_tokens`` tokens."""
  text = lambda k: prompts.prompt_text(f"{prompts.COUNT_QUESTION} {'1' * k}", ckpt.prompt_format)
  base = len(checkpoints.encode(ckpt.tokenizer, text(1), bos=True)) - 1
  if n_tokens <= base:
    raise ValueError(f"--prompt_lens: the prompt needs more than {base} tokens")
  ids = checkpoints.encode(ckpt.tokenizer, text(n_tokens - base), bos=True)
  assert len(ids) == n_tokens, (len(ids), n_tokens)
  return ids


def _best(fn, repeats):
  runs = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    runs.append((time.perf_counter() - t, out))
  return min(runs, key=lambda r: r[0])


def ours(ckpt, pol, ids, new_tokens, repeats):
  params = pol.cast_params(ckpt.params)
  t = time.perf_counter()
  generate.run(ckpt.config, pol, params, [ids], new_tokens)  # compiles
  first = time.perf_counter() - t
  total, g = _best(lambda: generate.run(ckpt.config, pol, params, [ids], new_tokens), repeats)
  return {"prefill_s": g.prefill_s, "decode_tok_s": g.steps / g.decode_s if g.steps else 0.0,
          "e2e_tok_s": new_tokens / total, "compile_s": first - total, "ids": g.ids[0],
          "step_ms": 1e3 * g.decode_s / max(g.steps, 1), "P": g.P, "S": g.S}


@functools.lru_cache(maxsize=None)
def _hf_model(path):
  """HF's model of the GGUF file, loaded once, with its end-of-sequence id switched off (model
  and generation config) so that it decodes every step, as our side (no stop ids) does. HF's
  ``min_new_tokens`` would instead set the EOS logit to -inf and so change its greedy tokens
  wherever EOS is the argmax (it is at N = 2000: BUILD_NOTES)."""
  import torch
  from transformers import AutoModelForCausalLM
  m = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                           dtype=torch.float32).eval()
  m.config.eos_token_id = None
  m.generation_config.eos_token_id = None
  return m


def hf(path, ids, new_tokens, repeats):
  import torch
  m = _hf_model(path)
  x = torch.tensor([ids])
  gen = lambda: m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                           do_sample=False, num_beams=1, pad_token_id=0)
  with torch.no_grad():
    gen()
    # the prefill as generate runs it: logits of the last row only (generate passes
    # logits_to_keep=1; all rows' logits would add a [N, V] head to HF's prefill time)
    t_pre, _ = _best(lambda: m(x, use_cache=True, logits_to_keep=1), repeats)
    total, out = _best(gen, repeats)
  return {"prefill_s": t_pre, "decode_tok_s": (new_tokens - 1) / max(total - t_pre, 1e-9),
          "e2e_tok_s": new_tokens / total, "ids": out[0, len(ids):].tolist(),
          "threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv):
  del argv
  with cli.usage_errors():
    policies = cli.policies(F.dtype)
    lens = cli.int_list(F.prompt_lens, "prompt_lens", minimum=2)
    if F.new_tokens < 2:
      raise ValueError(f"--new_tokens must be >= 2, got {F.new_tokens}")
  ckpt = checkpoints.load_model(F.model)
  path = (checkpoints.find_smollm2_gguf() if F.model == "smollm2"
          else checkpoints.find_gemma3_gguf())
  print(f"{ckpt.label}; {F.new_tokens} new tokens, batch 1, greedy; "
        f"numerics {xla_env.numerics_path()['name']}", flush=True)
  print(f"{'N':>5} {'side':>14} {'prefill s':>9} {'decode tok/s':>12} {'e2e tok/s':>9} "
        f"{'step ms':>7} {'compile s':>9}  same tokens as HF f32", flush=True)
  for n in lens:
    ids = prompt_of_length(ckpt, n)
    ref = hf(path, ids, F.new_tokens, F.repeats) if F.hf else None
    if ref:
      print(f"{n:>5} {'HF torch f32':>14} {ref['prefill_s']:9.3f} {ref['decode_tok_s']:12.1f} "
            f"{ref['e2e_tok_s']:9.1f} {1e3 / ref['decode_tok_s']:7.1f} {'-':>9}  "
            f"({ref['threads']} threads, torch {ref['torch']})", flush=True)
    for pol in policies:
      o = ours(ckpt, pol, ids, F.new_tokens, F.repeats)
      same = "-" if ref is None else str(o["ids"] == ref["ids"])
      print(f"{n:>5} {'ours ' + pol.name:>14} {o['prefill_s']:9.3f} {o['decode_tok_s']:12.1f} "
            f"{o['e2e_tok_s']:9.1f} {o['step_ms']:7.1f} {o['compile_s']:9.1f}  {same} "
            f"(P={o['P']}, S={o['S']})", flush=True)
      if ref:
        print(f"RATIO N={n} {pol.name}: ours/HF end-to-end tokens/s = "
              f"{o['e2e_tok_s'] / ref['e2e_tok_s']:.2f}, decode = "
              f"{o['decode_tok_s'] / ref['decode_tok_s']:.2f}, prefill time HF/ours = "
              f"{ref['prefill_s'] / o['prefill_s']:.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
