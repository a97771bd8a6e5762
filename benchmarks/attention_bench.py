r"""Decoder attention implementations side by side: "xla" vs "chunked" (and "cudnn" on GPUs).

  python benchmarks/attention_bench.py                  # 2 layers, 2048 tokens, ~1 minute
  python benchmarks/attention_bench.py --seq 4096 --chunk 512 --iters 2

One training-style forward+backward of the text decoder (causal + left-padding mask,
gradients for every weight) at a long sequence, as a video prompt makes it, compiled once
per implementation on the same weights and inputs. Printed per implementation: XLA's
temporary memory of the compiled step (memory_analysis; the logits tensors dominate it
for "xla"), the median step time, and the ratios to "xla"; and the largest difference of
the loss and gradients from "xla" (they compute the same function).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

# Run from a checkout without installing: the package sits next to benchmarks/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse():
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--batch", type=int, default=1, help="rows per step")
  p.add_argument("--seq", type=int, default=2048, help="tokens per row")
  p.add_argument("--layers", type=int, default=2, help="decoder layers")
  p.add_argument("--hidden", type=int, default=256, help="decoder width")
  p.add_argument("--heads", type=int, default=8, help="query heads (kv heads = heads/4)")
  p.add_argument("--chunk", type=int, default=256, help="query rows per block (chunked)")
  p.add_argument("--iters", type=int, default=3, help="timed steps (after one warm-up)")
  p.add_argument(
    "--impls",
    nargs="+",
    default=None,
    help="implementations to compare (default: xla chunked, + cudnn on GPU)",
  )
  return p.parse_args()


def main():
  a = _parse()
  from flax import nnx
  import jax
  import jax.numpy as jnp

  from benchmarks.timing import median_seconds
  from chronoforge_jax.models import config as model_config
  from chronoforge_jax.models import text

  impls = a.impls or (["xla", "chunked"] + (["cudnn"] if jax.default_backend() == "gpu" else []))
  head_dim = a.hidden // a.heads
  cfg = model_config.TextConfig(
    vocab_size=1024,
    hidden_size=a.hidden,
    intermediate_size=2 * a.hidden,
    num_hidden_layers=a.layers,
    num_attention_heads=a.heads,
    num_key_value_heads=max(1, a.heads // 4),
    mrope_section=(
      head_dim // 8,
      (head_dim // 2 - head_dim // 8) // 2,
      head_dim // 2 - head_dim // 8 - (head_dim // 2 - head_dim // 8) // 2,
    ),
  )
  dtype = jnp.bfloat16 if jax.default_backend() == "gpu" else jnp.float32
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((a.batch, a.seq, a.hidden)), dtype)
  positions = jnp.broadcast_to(jnp.arange(a.seq), (3, a.batch, a.seq))
  mask = np.ones((a.batch, a.seq), np.int32)
  mask[0, : a.seq // 16] = 0  # Left padding in the first row.
  mask = jnp.asarray(mask)
  print(
    f"decoder: {a.layers} layers, width {a.hidden}, {a.heads} query / "
    f"{cfg.num_key_value_heads} kv heads; batch {a.batch} x {a.seq} tokens; "
    f"{jnp.dtype(dtype).name} on {jax.devices()[0].platform}; chunk {a.chunk}"
  )

  params = None
  results = {}
  for impl in impls:
    model = text.TextDecoder(
      cfg, rngs=nnx.Rngs(0), dtype=dtype, attention_impl=impl, attention_chunk=a.chunk
    )
    graphdef, state = nnx.split(model)
    params = state if params is None else params  # Same weights for every impl.

    def loss_fn(p, x, graphdef=graphdef):
      h = nnx.merge(graphdef, p).hidden(x, positions, mask)
      return jnp.mean(h.astype(jnp.float32) ** 2)

    step = jax.jit(jax.value_and_grad(loss_fn))
    try:
      compiled = step.lower(params, x).compile()
    except Exception as e:
      print(f"  {impl}: unavailable here ({type(e).__name__}: {str(e).splitlines()[0]})")
      continue
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", 0) if mem is not None else 0
    seconds = median_seconds(lambda: compiled(params, x), a.iters)  # noqa: B023 (called here)
    loss, grads = compiled(params, x)
    results[impl] = (temp, seconds, float(loss), jax.tree.leaves(grads))

  base = results.get("xla")
  for impl, (temp, seconds, loss, grads) in results.items():
    line = f"{impl:>8}: temp memory {temp / 2**20:8.1f} MiB   step {seconds * 1e3:8.1f} ms"
    if base is not None and impl != "xla":
      diff = max(
        float(np.abs(np.asarray(g, np.float32) - np.asarray(b, np.float32)).max())
        for g, b in zip(grads, base[3])
      )
      line += (
        f"   memory {temp / max(base[0], 1):.2f}x  time {seconds / base[1]:.2f}x of "
        f"xla; |loss diff| {abs(loss - base[2]):.1e}, max |grad diff| {diff:.1e}"
      )
    print(line)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  main()
