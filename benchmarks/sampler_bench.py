"""The jit-compiled KV-cache sampler vs HF transformers `generate`, and group sharing.

  python benchmarks/sampler_bench.py                   # small config, ~2 minutes on a CPU
  python benchmarks/sampler_bench.py --new_tokens 64 --num_samples 8 --frames 16
  python benchmarks/sampler_bench.py --group_only --group_frames 8,122   # ~100, ~1,000

Measured side by side in one run, on one small random Qwen2.5-VL-architecture checkpoint
(built in transformers, saved, converted with `convert.load_hf_model`), with the same
text + video prompt:
  1. Time to first token (prefill incl. vision tower + first token, generate with one
     new token) of `sampling.generate` vs HF `generate`, greedy. Ratio HF / ours.
  2. Decode tokens/s: (rows * (T - 1)) / (time(T tokens) - time(1 token)), greedy, no
     stop token, for both. Ratio ours / HF.
  3. Group sharing: G samples of one prompt (one prefill, the prompt's KV cache shared:
     `sampling.share_prefix`) vs G independent prompts with their own videos (G
     prefills), temperature 1, G rows decoded either way; the former layout (the prompt
     cache copied G times, `shared_prefix=False`) side by side; and HF's
     `num_return_sequences=G` (which expands the inputs before prefill) for reference.
     With --group_frames, the same at each listed frame count (prompt length), ours only.
  4. Rollout KV-cache bytes per prompt, shared prefix vs G full copies
     (`sampling.kv_cache_bytes`), for G = --num_samples answers of --cache_answer tokens
     to a --cache_prompt-token prompt, for this checkpoint and for Qwen2.5-VL-7B (bf16).
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
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--hidden", type=int, default=256, help="decoder width")
  p.add_argument("--layers", type=int, default=4, help="decoder layers")
  p.add_argument("--vocab", type=int, default=4096, help="vocabulary size")
  p.add_argument("--frames", type=int, default=8, help="video frames per prompt")
  p.add_argument("--size", type=int, default=112, help="frame side (multiple of 28)")
  p.add_argument("--text_tokens", type=int, default=24, help="text tokens around the video")
  p.add_argument("--new_tokens", type=int, default=32, help="T, answer length")
  p.add_argument("--num_samples", type=int, default=8, help="G, samples per prompt")
  p.add_argument("--repeats", type=int, default=3, help="timed runs per figure (best of)")
  p.add_argument(
    "--skip_hf_group",
    action="store_true",
    help="skip HF's num_return_sequences / independent-prompt runs (slow)",
  )
  p.add_argument(
    "--torch_threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
  )
  p.add_argument(
    "--group_frames",
    type=str,
    default="",
    help="comma-separated frame counts: group vs independent timing at each "
    "(e.g. 8,122 at --size 112: ~100 and ~1,000 prompt tokens)",
  )
  p.add_argument(
    "--group_only",
    action="store_true",
    help="only the group timings (--group_frames) and the cache bytes",
  )
  p.add_argument("--cache_prompt", type=int, default=1000, help="prompt tokens (bytes)")
  p.add_argument("--cache_answer", type=int, default=128, help="answer tokens (bytes)")
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
  from tests import hf_reference

  heads = max(1, args.hidden // 64)
  half = args.hidden // heads // 2
  t = half // 4
  section = [t, (half - t) // 2, half - t - (half - t) // 2]
  v = args.vocab
  return hf_reference.hf_config_dict(
    text=dict(
      vocab_size=v,
      hidden_size=args.hidden,
      intermediate_size=2 * args.hidden,
      num_hidden_layers=args.layers,
      num_attention_heads=heads,
      num_key_value_heads=max(1, heads // 2),
      bos_token_id=v - 3,
      eos_token_id=v - 2,
      pad_token_id=v - 1,
      rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
    ),
    vision=dict(
      depth=2,
      hidden_size=128,
      intermediate_size=256,
      num_heads=2,
      out_hidden_size=args.hidden,
      window_size=112,
      fullatt_block_indexes=[1],
    ),
    image_token_id=v - 7,
    video_token_id=v - 6,
    vision_start_token_id=v - 5,
    vision_end_token_id=v - 4,
  )


def _cache_bytes_line(text_cfg, name: str, args, dtype) -> str:
  import numpy as np

  from chronoforge_jax.models import sampling

  kw = dict(
    prompt_len=args.cache_prompt,
    max_new_tokens=args.cache_answer,
    num_samples=args.num_samples,
    dtype=dtype,
  )
  before = sampling.kv_cache_bytes(text_cfg, shared_prefix=False, **kw)
  after = sampling.kv_cache_bytes(text_cfg, **kw)
  per_slot = sampling.kv_cache_bytes(
    text_cfg, prompt_len=1, max_new_tokens=1, num_samples=1, shared_prefix=False, dtype=dtype
  )
  mib = lambda n: f"{n / 2**20:8.2f} MiB"
  return (
    f"  {name} ({text_cfg.num_hidden_layers} layers x {text_cfg.num_key_value_heads} "
    f"kv heads x {text_cfg.head_dim}, {np.dtype(dtype).name}): before (G copies) "
    f"{mib(before)}  after (shared prefix) {mib(after)}  after/before "
    f"{after / before:.3f}; one prompt alone {mib(args.cache_prompt * per_slot)}, "
    f"after = one prompt + {args.num_samples} x "
    f"{sampling.answer_slots(args.cache_answer)} answer slots"
  )


def _group_timings(ours, cfg, args) -> None:
  """G samples of one prompt vs G independent prompts, at each --group_frames."""
  import jax
  import numpy as np

  from chronoforge_jax.models import sampling
  from tests import hf_reference

  g, t_new = args.num_samples, args.new_tokens
  half = args.text_tokens // 2
  patch = cfg.vision.patch_size
  cases, lengths = {}, {}
  for frames in [int(f) for f in args.group_frames.split(",") if f]:
    grid = (
      max(1, frames // cfg.vision.temporal_patch_size),
      args.size // patch,
      args.size // patch,
    )
    rng = np.random.default_rng(frames)
    one = hf_reference.video_prompt_batch(cfg, [grid], [(half, half)], rng)
    many = hf_reference.video_prompt_batch(cfg, [grid] * g, [(half, half)] * g, rng)
    lengths[frames] = one["input_ids"].shape[1]

    def fn(inputs, samples, shared=True):
      x = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
      kw = dict(
        max_new_tokens=t_new,
        num_samples=samples,
        temperature=1.0,
        stop_tokens=[],
        rng=jax.random.key(0),
        shared_prefix=shared,
      )
      return lambda: jax.block_until_ready(sampling.generate(ours, x, **kw).tokens)

    cases[(frames, "group")] = fn(one, g)
    cases[(frames, "group_copies")] = fn(one, g, shared=False)
    cases[(frames, "indep")] = fn(many, 1)
  for key, fn in cases.items():
    start = time.perf_counter()
    fn()
    print(
      f"  first call of {key[1]:12s} ({lengths[key[0]]:5d} prompt tokens) "
      f"{time.perf_counter() - start:6.1f} s",
      flush=True,
    )
  secs = _interleaved_best(cases, args.repeats)
  print(
    f"\nG={g} samples of one prompt vs {g} independent prompts, T={t_new}, temperature "
    f"1 (best of {args.repeats} interleaved runs):"
  )
  for frames, n in lengths.items():
    grp, copies, indep = (secs[(frames, k)] for k in ("group", "group_copies", "indep"))
    print(
      f"  prompt {n:5d} tokens: shared prefix {grp * 1e3:8.1f} ms   G copies "
      f"{copies * 1e3:8.1f} ms   independent {indep * 1e3:8.1f} ms   group/indep = "
      f"{grp / indep:.2f} (G copies: {copies / indep:.2f})",
      flush=True,
    )


def main() -> None:
  args = _parse()
  import jax
  import numpy as np
  import torch

  from chronoforge_jax.models import config as config_lib
  from chronoforge_jax.models import convert, sampling
  from tests import hf_reference

  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  cfg_dict = _config(args)
  print(
    f"building the checkpoint (hidden {args.hidden}, {args.layers} layers, vocab "
    f"{args.vocab}); torch threads {torch.get_num_threads()}, jax devices "
    f"{jax.devices()[0].platform} x{jax.device_count()}",
    flush=True,
  )
  hf = hf_reference.build_hf_model(cfg_dict, seed=0)
  hf.generation_config.eos_token_id = None
  with tempfile.TemporaryDirectory() as tmp:
    hf.save_pretrained(tmp)
    ours = convert.load_hf_model(tmp, text_position_after_video="spatial")
  cfg = ours.config
  print(
    f"rollout KV cache (K+V) per prompt, G={args.num_samples} answers of "
    f"{args.cache_answer} tokens to a {args.cache_prompt}-token prompt:"
  )
  print(_cache_bytes_line(cfg.text, "this checkpoint", args, np.float32))
  print(
    _cache_bytes_line(
      config_lib.get_preset("qwen2_5_vl_7b").text, "Qwen2.5-VL-7B", args, jax.numpy.bfloat16
    ),
    flush=True,
  )
  if args.group_frames:
    _group_timings(ours, cfg, args)
  if args.group_only:
    return
  patch = cfg.vision.patch_size
  grid = (
    max(1, args.frames // cfg.vision.temporal_patch_size),
    args.size // patch,
    args.size // patch,
  )
  half = args.text_tokens // 2
  g = args.num_samples
  rng = np.random.default_rng(0)
  one = hf_reference.video_prompt_batch(cfg, [grid], [(half, half)], rng)
  many = hf_reference.video_prompt_batch(cfg, [grid] * g, [(half, half)] * g, rng)
  suppress = [cfg.image_token_id, cfg.video_token_id]
  print(
    f"prompt: {one['input_ids'].shape[1]} tokens ({int(np.prod(grid)) // 4} video "
    f"tokens from {args.frames} frames of {args.size}x{args.size}); T = "
    f"{args.new_tokens}, G = {g}",
    flush=True,
  )

  def ours_fn(inputs, t, samples=1, temperature=0.0, shared=True):
    x = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    kw = dict(
      max_new_tokens=t,
      num_samples=samples,
      temperature=temperature,
      stop_tokens=[],
      rng=jax.random.key(0),
      shared_prefix=shared,
    )
    return lambda: jax.block_until_ready(sampling.generate(ours, x, **kw).tokens)

  def hf_fn(inputs, t, samples=1, sample=False):
    x = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    kw = dict(
      max_new_tokens=t,
      min_new_tokens=t,
      do_sample=sample,
      num_return_sequences=samples,
      suppress_tokens=suppress,
      pad_token_id=cfg.pad_token_id,
    )
    if sample:
      kw.update(temperature=1.0, top_k=0, top_p=1.0)

    def run():
      with torch.no_grad():
        return hf.generate(**x, **kw)

    return run

  t_new = args.new_tokens
  cases = {
    "ours_ttft": ours_fn(one, 1),
    "ours_full": ours_fn(one, t_new),
    "hf_ttft": hf_fn(one, 1),
    "hf_full": hf_fn(one, t_new),
    "ours_group": ours_fn(one, t_new, g, 1.0),
    "ours_indep": ours_fn(many, t_new, 1, 1.0),
    "ours_copies": ours_fn(one, t_new, g, 1.0, shared=False),
  }
  if not args.skip_hf_group:
    cases.update(hf_group=hf_fn(one, t_new, g, True), hf_indep=hf_fn(many, t_new, 1, True))
  for name, fn in cases.items():
    start = time.perf_counter()
    fn()  # compile (ours) / warm up (HF)
    print(f"  first call of {name:11s} {time.perf_counter() - start:6.1f} s", flush=True)
  secs = _interleaved_best(cases, args.repeats)
  for name, sec in secs.items():
    print(f"  {name:11s} {sec * 1e3:9.1f} ms")

  rows_decoded = t_new - 1
  ours_tps = rows_decoded / max(secs["ours_full"] - secs["ours_ttft"], 1e-9)
  hf_tps = rows_decoded / max(secs["hf_full"] - secs["hf_ttft"], 1e-9)
  print(f"\nresults (best of {args.repeats} interleaved runs)")
  print(
    f"  time to first token   ours {secs['ours_ttft'] * 1e3:8.1f} ms   HF "
    f"{secs['hf_ttft'] * 1e3:8.1f} ms   HF/ours = {secs['hf_ttft'] / secs['ours_ttft']:.2f}x"
  )
  print(
    f"  decode tokens/s (B=1) ours {ours_tps:8.1f}      HF {hf_tps:8.1f}      "
    f"ours/HF = {ours_tps / hf_tps:.2f}x"
  )
  print(f"  G={g} samples of one prompt vs {g} independent prompts, T={t_new}:")
  print(
    f"    ours  {secs['ours_group'] * 1e3:8.1f} ms vs {secs['ours_indep'] * 1e3:8.1f} ms"
    f"   group/indep = {secs['ours_group'] / secs['ours_indep']:.2f}   (G prompt copies:"
    f" {secs['ours_copies'] * 1e3:.1f} ms, "
    f"{secs['ours_copies'] / secs['ours_indep']:.2f})"
  )
  if not args.skip_hf_group:
    print(
      f"    HF    {secs['hf_group'] * 1e3:8.1f} ms vs {secs['hf_indep'] * 1e3:8.1f} ms"
      f"   group/indep = {secs['hf_group'] / secs['hf_indep']:.2f}"
    )
    print(
      f"    ours G={g} vs HF num_return_sequences={g}: "
      f"HF/ours = {secs['hf_group'] / secs['ours_group']:.2f}x"
    )


if __name__ == "__main__":
  main()
