r"""Vision-tower time per KF-GRPO rollout: encode the union once vs encode each view.

  python benchmarks/train_bench.py [--batch 4] [--k 16] [--size 112] [--repeats 5]

A KF-GRPO step needs two views of every video: the K ordered keyframes and a hybrid
disordered view of K frames (half keyframes, half non-keyframes by default). Qwen2.5-VL's
vision tower attends only within a temporal patch (two frames), so the trainer encodes
the union (K keyframes + M non-keyframe pairs) once and gathers both views from it
(chronoforge_jax/rl/kf_grpo.py). This script times, side by side in one run, that path
against encoding the two views separately, with a vision tower of the paper's 7B
geometry scaled down (same patch/merge/window layout, smaller width) so it runs on a CPU.
It prints both times and their ratio, and checks both paths give the same tokens.
"""

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chronoforge_jax.models import config as model_config
from chronoforge_jax.models import vlm
from chronoforge_jax.rl import kf_grpo
from chronoforge_jax.rl import views as views_lib


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=4, help="videos per step")
  parser.add_argument("--k", type=int, default=16, help="keyframes per video (even)")
  parser.add_argument("--size", type=int, default=112, help="frame side (multiple of 28)")
  parser.add_argument("--width", type=int, default=128, help="vision tower width")
  parser.add_argument("--depth", type=int, default=4, help="vision tower blocks")
  parser.add_argument("--disorder_ratio", type=float, default=0.5)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  base = model_config.get_preset("tiny")
  vision = dataclasses.replace(base.vision, hidden_size=args.width, num_heads=4,
                               intermediate_size=2 * args.width, depth=args.depth,
                               fullatt_block_indexes=(args.depth - 1,), window_size=112)
  model = vlm.VideoLanguageModel(dataclasses.replace(base, vision=vision), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)

  kp = args.k // 2
  m = views_lib.default_num_pairs(args.k, args.disorder_ratio)
  u = args.k + 2 * m
  rng = np.random.default_rng(0)
  frames = jnp.asarray(rng.integers(0, 256, (args.batch, u, args.size, args.size, 3),
                                    dtype=np.uint8))
  timestamps = jnp.asarray(np.tile(np.arange(u, dtype=np.float32), (args.batch, 1)))
  disordered = np.stack([
      views_lib.disordered_patches(args.k, m, args.disorder_ratio, np.random.default_rng(i))
      for i in range(args.batch)]).astype(np.int32)
  batch = {"frames": frames, "timestamps": timestamps,
           "ordered_patches": jnp.broadcast_to(jnp.arange(kp, dtype=jnp.int32),
                                               (args.batch, kp)),
           "disordered_patches": jnp.asarray(disordered)}

  @jax.jit
  def union_once(state, batch):
    out = kf_grpo.batch_views(nnx.merge(graphdef, state), batch)
    return out["ordered"]["video_embeds"], out["disordered"]["video_embeds"]

  @jax.jit
  def per_view(state, batch):
    model = nnx.merge(graphdef, state)
    return tuple(kf_grpo.batch_views(model, batch, views=(name,))[name]["video_embeds"]
                 for name in ("ordered", "disordered"))

  fns = {"union once": union_once, "each view": per_view}
  outs = {name: jax.block_until_ready(fn(state, batch)) for name, fn in fns.items()}
  for a, b in zip(outs["union once"], outs["each view"]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
  best = {name: float("inf") for name in fns}
  for _ in range(args.repeats):  # Round-robin, best of N: the machine is noisy.
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(state, batch))
      best[name] = min(best[name], time.perf_counter() - t0)
  print(f"{args.batch} videos, K={args.k} keyframes + {m} non-keyframe pairs "
        f"({u} frames in the union, {2 * args.k} frames in the two views), "
        f"{args.size}px, tower width {args.width} x {args.depth} blocks, {jax.devices()[0]}")
  for name, t in best.items():
    print(f"  {name:10s} {1e3 * t:8.1f} ms")
  print(f"  union once / each view = {best['union once'] / best['each view']:.2f} "
        f"(frame ratio {u / (2 * args.k):.2f}); saved per rollout step: "
        f"{1e3 * (best['each view'] - best['union once']):.1f} ms")


if __name__ == "__main__":
  main()
