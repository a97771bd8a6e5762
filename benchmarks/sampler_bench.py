"""The jit-compiled KV-cache sampler vs HF transformers `generate`, and group sharing.

  python benchmarks/sampler_bench.py                   # small config, ~2 minutes on a CPU
  python benchmarks/sampler_bench.py --new_tokens 64 --num_samples 8 --frames 16

Measured side by side in one run, on one small random Qwen2.5-VL-architecture checkpoint
(built in transformers, saved, converted with `convert.load_hf_model`), with the same
text + video prompt:
  1. Time to first token (prefill incl. vision tower + first token, generate with one
     new token) of `sampling.generate` vs HF `generate`, greedy. Ratio HF / ours.
  2. Decode tokens/s: (rows * (T - 1)) / (time(T tokens) - time(1 token)), greedy, no
     stop token, for both. Ratio ours / HF.
  3. Group sharing: G samples of one prompt (one prefill, cache repeated) vs G
     independent prompts with their own videos (G prefills), temperature 1, G rows
     decoded either way; and HF's `num_return_sequences=G` (which expands the inputs
     before prefill) for reference.
JAX times are of the compiled program (compiled once before timing); every figure is the
best of --repeats runs, timed round-robin over the cases. Wall-clock numbers depend on
the machine and its load; the ratios are the point.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _parse() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--hidden", type=int, default=256, help="decoder width")
  p.add_argument("--layers", type=int, default=4, help="decoder layers")
  p.add_argument("--vocab", type=int, default=4096, help="vocabulary size")
  p.add_argument("--frames", type=int, default=8, help="video frames per prompt")
  p.add_argument("--size", type=int, default=112, help="frame side (multiple of 28)")
  p.add_argument("--text_tokens", type=int, default=24, help="text tokens around the video")
  p.add_argument("--new_tokens", type=int, default=32, help="T, answer length")
  p.add_argument("--num_samples", type=int, default=8, help="G, samples per prompt")
  p.add_argument("--repeats", type=int, default=3, help="timed runs per figure (best of)")
  p.add_argument("--skip_hf_group", action="store_true",
                 help="skip HF's num_return_sequences / independent-prompt runs (slow)")
  p.add_argument("--torch_threads", type=int, default=0,
                 help="torch intra-op threads (0: torch's default)")
  return p.parse_args()


def _interleaved_best(cases: dict, repeats: int) -> dict[str, float]:
  """Best-of-N seconds of each case, timed round-robin so load drift hits all cases alike.

  The minimum, as `timeit` recommends: on a shared machine the slower runs measure the
  other processes.
  """
  times = {name: [] for name in cases}
  for _ in range(repeats):
    for name, fn in cases.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: min(t) for name, t in times.items()}


def _config(args) -> dict:
  from chronoforge_jax.models import hf_reference
  heads = max(1, args.hidden // 64)
  half = args.hidden // heads // 2
  t = half // 4
  section = [t, (half - t) // 2, half - t - (half - t) // 2]
  v = args.vocab
  return hf_reference.hf_config_dict(
      text=dict(vocab_size=v, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                num_hidden_layers=args.layers, num_attention_heads=heads,
                num_key_value_heads=max(1, heads // 2), bos_token_id=v - 3,
                eos_token_id=v - 2, pad_token_id=v - 1,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": section}),
      vision=dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2,
                  out_hidden_size=args.hidden, window_size=112,
                  fullatt_block_indexes=[1]),
      image_token_id=v - 7, video_token_id=v - 6, vision_start_token_id=v - 5,
      vision_end_token_id=v - 4)


def main() -> None:
  args = _parse()
  import jax
  import numpy as np
  import torch

  from chronoforge_jax import convert, sampling
  from chronoforge_jax.models import hf_reference

  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  cfg_dict = _config(args)
  print(f"building the checkpoint (hidden {args.hidden}, {args.layers} layers, vocab "
        f"{args.vocab}); torch threads {torch.get_num_threads()}, jax devices "
        f"{jax.devices()[0].platform} x{jax.device_count()}", flush=True)
  hf = hf_reference.build_hf_model(cfg_dict, seed=0)
  hf.generation_config.eos_token_id = None
  with tempfile.TemporaryDirectory() as tmp:
    hf.save_pretrained(tmp)
    ours = convert.load_hf_model(tmp, text_position_after_video="spatial")
  cfg = ours.config
  patch = cfg.vision.patch_size
  grid = (max(1, args.frames // cfg.vision.temporal_patch_size), args.size // patch,
          args.size // patch)
  half = args.text_tokens // 2
  g = args.num_samples
  rng = np.random.default_rng(0)
  one = hf_reference.video_prompt_batch(cfg, [grid], [(half, half)], rng)
  many = hf_reference.video_prompt_batch(cfg, [grid] * g, [(half, half)] * g, rng)
  suppress = [cfg.image_token_id, cfg.video_token_id]
  print(f"prompt: {one['input_ids'].shape[1]} tokens ({int(np.prod(grid)) // 4} video "
        f"tokens from {args.frames} frames of {args.size}x{args.size}); T = "
        f"{args.new_tokens}, G = {g}", flush=True)

  def ours_fn(inputs, t, samples=1, temperature=0.0):
    x = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    kw = dict(max_new_tokens=t, num_samples=samples, temperature=temperature,
              stop_tokens=[], rng=jax.random.key(0))
    return lambda: jax.block_until_ready(sampling.generate(ours, x, **kw).tokens)

  def hf_fn(inputs, t, samples=1, sample=False):
    x = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    kw = dict(max_new_tokens=t, min_new_tokens=t, do_sample=sample,
              num_return_sequences=samples, suppress_tokens=suppress,
              pad_token_id=cfg.pad_token_id)
    if sample:
      kw.update(temperature=1.0, top_k=0, top_p=1.0)

    def run():
      with torch.no_grad():
        return hf.generate(**x, **kw)
    return run

  t_new = args.new_tokens
  cases = {
      "ours_ttft": ours_fn(one, 1), "ours_full": ours_fn(one, t_new),
      "hf_ttft": hf_fn(one, 1), "hf_full": hf_fn(one, t_new),
      "ours_group": ours_fn(one, t_new, g, 1.0), "ours_indep": ours_fn(many, t_new, 1, 1.0),
  }
  if not args.skip_hf_group:
    cases.update(hf_group=hf_fn(one, t_new, g, True), hf_indep=hf_fn(many, t_new, 1, True))
  for name, fn in cases.items():
    start = time.perf_counter()
    fn()                                      # compile (ours) / warm up (HF)
    print(f"  first call of {name:11s} {time.perf_counter() - start:6.1f} s", flush=True)
  secs = _interleaved_best(cases, args.repeats)
  for name, sec in secs.items():
    print(f"  {name:11s} {sec * 1e3:9.1f} ms")

  rows_decoded = t_new - 1
  ours_tps = rows_decoded / max(secs["ours_full"] - secs["ours_ttft"], 1e-9)
  hf_tps = rows_decoded / max(secs["hf_full"] - secs["hf_ttft"], 1e-9)
  print(f"\nresults (best of {args.repeats} interleaved runs)")
  print(f"  time to first token   ours {secs['ours_ttft'] * 1e3:8.1f} ms   HF "
        f"{secs['hf_ttft'] * 1e3:8.1f} ms   HF/ours = {secs['hf_ttft'] / secs['ours_ttft']:.2f}x")
  print(f"  decode tokens/s (B=1) ours {ours_tps:8.1f}      HF {hf_tps:8.1f}      "
        f"ours/HF = {ours_tps / hf_tps:.2f}x")
  print(f"  G={g} samples of one prompt vs {g} independent prompts, T={t_new}:")
  print(f"    ours  {secs['ours_group'] * 1e3:8.1f} ms vs {secs['ours_indep'] * 1e3:8.1f} ms"
        f"   group/indep = {secs['ours_group'] / secs['ours_indep']:.2f}")
  if not args.skip_hf_group:
    print(f"    HF    {secs['hf_group'] * 1e3:8.1f} ms vs {secs['hf_indep'] * 1e3:8.1f} ms"
          f"   group/indep = {secs['hf_group'] / secs['hf_indep']:.2f}")
    print(f"    ours G={g} vs HF num_return_sequences={g}: "
          f"HF/ours = {secs['hf_group'] / secs['ours_group']:.2f}x")


if __name__ == "__main__":
  main()
