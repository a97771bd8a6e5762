r"""Measured MFU of a decoder train step at Qwen2.5-VL-7B's width (on a GPU: cuDNN attention).

  python benchmarks/gpu_mfu.py                                  # GPU: 7B width, 2 layers
  python benchmarks/gpu_mfu.py --batch 8 --seq 4096 --remat full
  python benchmarks/gpu_mfu.py --width_scale 0.0625 --seq 256 --iters 2   # CPU smoke

One jitted training step of the text decoder (embedding, `--layers` decoder layers of
Qwen2.5-VL-7B's geometry: width 3584, 28 query / 4 key-value heads of 128, SwiGLU 18944,
vocabulary 152064, untied LM head; float32 params, `--dtype` compute) on random tokens
with a causal + padding mask: next-token cross-entropy, value_and_grad, AdamW update,
params and optimizer state donated, as the trainer steps. Timed on one device, median of
`--iters` steps after a warm-up (compile) step.

Printed: tokens/s, achieved model TFLOP/s and MFU = achieved / `--peak_tflops` (default
from the device kind: H100 / H200 989 dense bf16 TFLOP/s, A100 312; no MFU on other
devices unless given). Model FLOPs per token are the standard count
(`planning.decoder_train_flops_per_token`, PaLM appendix B): 6 N + 12 L H hd S, N the
matmul weights (layers + LM head), attention over the full S x S logits (--causal_flops
halves that term). Remat recompute is not counted: it lowers MFU, as it should.

`--width_scale s` shrinks head width, MLP width and vocabulary by s (heads kept), so the
same code runs on a CPU in seconds (`--attention` then defaults to "xla": cuDNN attention
needs an NVIDIA GPU).
"""

from __future__ import annotations

import argparse
import os
import sys

# Run from a checkout without installing: the package sits next to benchmarks/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Dense bf16 TFLOP/s per device by device kind (substring, first match wins).
PEAK_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0))


def _parse(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--layers", type=int, default=2, help="decoder layers")
  p.add_argument("--batch", type=int, default=4, help="rows per step")
  p.add_argument("--seq", type=int, default=2048, help="tokens per row")
  p.add_argument(
    "--width_scale",
    type=float,
    default=1.0,
    help="scale head width, MLP width and vocabulary (1.0: the 7B's)",
  )
  p.add_argument(
    "--attention",
    default=None,
    help="layers.ATTENTION_IMPLS entry (default: cudnn on GPU, else xla)",
  )
  p.add_argument("--remat", default="none", help="remat policy: none | full | dots | dots_no_batch")
  p.add_argument("--dtype", default="bfloat16", help="compute dtype")
  p.add_argument("--iters", type=int, default=10, help="timed steps (after one warm-up)")
  p.add_argument(
    "--peak_tflops",
    type=float,
    default=None,
    help="device peak TFLOP/s for MFU (default: by device kind, "
    + ", ".join(f"{k} {v:g}" for k, v in PEAK_TFLOPS)
    + ")",
  )
  p.add_argument(
    "--causal_flops",
    action="store_true",
    help="count half the attention logits (causal) instead of all",
  )
  return p.parse_args(argv)


def text_config(a):
  """Qwen2.5-VL-7B's decoder geometry at `a.layers` layers, widths scaled by a.width_scale."""
  from chronoforge_jax.models import config as model_config

  seven_b = model_config.get_preset("qwen2_5_vl_7b").text
  heads, kv = seven_b.num_attention_heads, seven_b.num_key_value_heads
  hd = max(8, int(round(seven_b.head_dim * a.width_scale / 8)) * 8)  # even, rope needs it
  half = hd // 2
  t = half // 4
  return model_config.TextConfig(
    vocab_size=max(64, int(round(seven_b.vocab_size * a.width_scale))),
    hidden_size=heads * hd,
    intermediate_size=max(8, int(round(seven_b.intermediate_size * a.width_scale))),
    num_hidden_layers=a.layers,
    num_attention_heads=heads,
    num_key_value_heads=kv,
    rope_theta=seven_b.rope_theta,
    mrope_section=(t, (half - t) // 2, half - t - (half - t) // 2),
    tie_word_embeddings=False,
  )


def default_peak_tflops(device_kind: str) -> float | None:
  for name, tflops in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return tflops
  return None


def main(argv=None):
  a = _parse(argv)
  import statistics
  import time

  from flax import nnx
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from chronoforge_jax.models import text
  from chronoforge_jax.train import planning

  device = jax.devices()[0]
  impl = a.attention or ("cudnn" if device.platform == "gpu" else "xla")
  cfg = text_config(a)
  dtype = jnp.dtype(a.dtype)
  with jax.default_device(device):
    model = text.TextDecoder(
      cfg,
      rngs=nnx.Rngs(0),
      dtype=dtype,
      param_dtype=jnp.float32,
      remat_policy=a.remat,
      attention_impl=impl,
    )
    graphdef, params = nnx.split(model)
    tx = optax.adamw(1e-5, weight_decay=0.01)
    opt_state = tx.init(params)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (a.batch, a.seq + 1)), jnp.int32)
    mask = np.ones((a.batch, a.seq), np.int32)
    mask[0, : a.seq // 16] = 0  # Left padding in the first row, as prompts have.
    mask = jnp.asarray(mask)

  def loss_fn(params, ids, mask):
    m = nnx.merge(graphdef, params)
    positions = jnp.broadcast_to(jnp.cumsum(mask, axis=1)[None] - 1, (3,) + mask.shape)
    h = m.hidden(m.embed_tokens(ids[:, :-1]), positions, mask)
    ce = optax.softmax_cross_entropy_with_integer_labels(m.logits(h), ids[:, 1:])
    return jnp.sum(ce * mask) / jnp.sum(mask)

  def step(params, opt_state, ids, mask):
    loss, grads = jax.value_and_grad(loss_fn)(params, ids, mask)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(step, donate_argnums=(0, 1))
  t0 = time.perf_counter()
  params, opt_state, loss = jax.block_until_ready(step(params, opt_state, ids, mask))
  first = time.perf_counter() - t0
  times = []
  for _ in range(a.iters):
    t0 = time.perf_counter()
    params, opt_state, loss = jax.block_until_ready(step(params, opt_state, ids, mask))
    times.append(time.perf_counter() - t0)
  sec = statistics.median(times)

  tokens = a.batch * a.seq
  per_token = planning.decoder_train_flops_per_token(cfg, a.seq, causal=a.causal_flops)
  achieved = per_token * tokens / sec
  peak = a.peak_tflops or default_peak_tflops(device.device_kind)
  n = planning.decoder_matmul_params(cfg)
  print(
    f"device: {device.device_kind} ({device.platform}); decoder {cfg.num_hidden_layers} "
    f"layers, width {cfg.hidden_size}, {cfg.num_attention_heads} / "
    f"{cfg.num_key_value_heads} heads of {cfg.head_dim}, MLP {cfg.intermediate_size}, "
    f"vocab {cfg.vocab_size}; attention {impl}, remat {a.remat}, {dtype.name} compute"
  )
  print(
    f"batch {a.batch} x {a.seq} tokens; matmul params N = {n / 1e6:.1f}M; "
    f"{per_token / 1e9:.3f} GFLOP per token (6N + attention, "
    f"{'causal' if a.causal_flops else 'full'} logits)"
  )
  print(
    f"first step (compile + run) {first:.1f} s; step {sec * 1e3:.1f} ms (median of "
    f"{a.iters}); loss {float(loss):.3f}"
  )
  print(f"tokens/s {tokens / sec:,.0f}")
  print(f"achieved {achieved / 1e12:.2f} TFLOP/s")
  if peak:
    print(f"MFU {achieved / (peak * 1e12):.1%} of {peak:g} TFLOP/s")
  else:
    print(f"MFU: no peak known for {device.device_kind!r}; pass --peak_tflops")


if __name__ == "__main__":
  main()
