r"""Forward+backward throughput of the NNX VLM vs. transformers' Qwen2.5-VL, same weights.

  python benchmarks/model_bench.py                     # small config, a couple of minutes
  python benchmarks/model_bench.py --layers 8 --hidden 512 --seq 512 --iters 5
  python benchmarks/model_bench.py --seqs 128 256 512   # several lengths, one table

Measured side by side in one run on this machine:
  1. tokens/s of one training step's forward+backward (loss = mean squared logits over
     real tokens, gradients for every weight) for the jitted NNX model and for the
     PyTorch transformers model (eager, CPU, all threads), and their ratio;
  2. the NNX step's achieved FLOP rate (XLA's cost analysis of the compiled step,
     divided by its time) as a fraction of a large float32 matmul's FLOP rate, measured
     the same way: how close the model gets to this machine's practical peak.
Both models take the same inputs: text with one video per row.
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
  p.add_argument("--batch", type=int, default=2, help="rows per step")
  p.add_argument("--seq", type=int, default=256, help="tokens per row (incl. video)")
  p.add_argument(
    "--seqs",
    type=int,
    nargs="+",
    default=None,
    help="several tokens-per-row values, measured one after another in this "
    "run (same weights) and summarised in one table; overrides --seq",
  )
  p.add_argument("--layers", type=int, default=4, help="decoder layers")
  p.add_argument("--hidden", type=int, default=256, help="decoder width")
  p.add_argument("--heads", type=int, default=4, help="query heads (kv heads = heads/2)")
  p.add_argument("--vocab", type=int, default=4096, help="vocabulary size")
  p.add_argument("--vision_depth", type=int, default=2, help="vision blocks")
  p.add_argument(
    "--grid", type=int, nargs=3, default=(2, 8, 8), help="video patch grid T H W per row"
  )
  p.add_argument("--iters", type=int, default=3, help="timed steps (after one warm-up)")
  p.add_argument(
    "--rounds",
    type=int,
    default=1,
    help="alternate NNX and transformers timings this many times per length "
    "and report the median ratio over rounds (steadier on a busy machine)",
  )
  p.add_argument(
    "--dense_cpu_attention",
    action="store_true",
    help='also time the NNX step with the decoder\'s "xla" attention as it '
    "was lowered for a CPU before query blocks (layers.CPU_BLOCKED=False)",
  )
  p.add_argument("--matmul", type=int, default=2048, help="side of the reference matmul")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
  return p.parse_args()


def _config(a):
  from tests import hf_reference

  h = a.hidden
  return hf_reference.hf_config_dict(
    text={
      "vocab_size": a.vocab,
      "hidden_size": h,
      "intermediate_size": int(h * 2.7),
      "num_hidden_layers": a.layers,
      "num_attention_heads": a.heads,
      "num_key_value_heads": max(1, a.heads // 2),
      "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 1e6,
        "mrope_section": _sections(h // a.heads // 2),
      },
      "bos_token_id": a.vocab - 3,
      "eos_token_id": a.vocab - 2,
      "pad_token_id": a.vocab - 1,
    },
    vision={
      "depth": a.vision_depth,
      "hidden_size": 128,
      "num_heads": 2,
      "intermediate_size": 256,
      "out_hidden_size": h,
      "window_size": 112,
      "fullatt_block_indexes": [a.vision_depth - 1],
    },
    image_token_id=a.vocab - 7,
    video_token_id=a.vocab - 6,
    vision_start_token_id=a.vocab - 5,
    vision_end_token_id=a.vocab - 4,
  )


def _sections(half):
  t = half // 4
  return [t, (half - t) // 2, half - t - (half - t) // 2]


def main():
  a = _parse()
  import jax
  import jax.numpy as jnp
  import torch

  from benchmarks.timing import median_seconds
  from chronoforge_jax.models.config import from_hf_config
  from tests import hf_reference

  torch.set_num_threads(a.threads)
  cfg_dict = _config(a)
  cfg = from_hf_config(cfg_dict)
  seqs = a.seqs or [a.seq]
  print(
    f"config: {a.layers} layers, width {a.hidden}, vocab {a.vocab}, vision depth "
    f"{a.vision_depth}; batch {a.batch}; tokens per row {seqs}; devices: "
    f"{jax.devices()[0].platform} x{jax.device_count()}, torch threads {a.threads}; "
    f"{a.iters} timed steps x {a.rounds} round(s)"
  )

  hf, model = hf_reference.build_pair(cfg_dict, seed=0, text_position_after_video="spatial")
  hf.train()

  # --- reference matmul ---------------------------------------------------------------
  n = a.matmul
  x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  mm = jax.jit(lambda x: x @ x).lower(x).compile()
  mm_time = median_seconds(lambda: mm(x), max(3, a.iters))
  mm_rate = 2 * n**3 / mm_time

  rows = [_measure(a, cfg, hf, model, seq, mm_rate, median_seconds) for seq in seqs]
  print(
    f"\nfwd+bwd, NNX vs transformers (same weights, same inputs; "
    f"{n}x{n} f32 matmul: {mm_rate / 1e9:.2f} GFLOP/s)"
  )
  dense = a.dense_cpu_attention
  print(
    f"{'tokens/row':>10} {'nnx tok/s':>10} {'hf tok/s':>10} {'nnx/hf':>7} "
    f"{'nnx ms':>8} {'hf ms':>8} {'GFLOP':>7} {'of mm':>6}"
    + (f" {'nnx/hf, dense CPU attention':>28}" if dense else "")
  )
  for r in rows:
    print(
      f"{r['seq']:>10} {r['nnx_tps']:>10,.0f} {r['hf_tps']:>10,.0f} {r['ratio']:>6.2f}x "
      f"{r['nnx_ms']:>8.1f} {r['hf_ms']:>8.1f} {r['gflop']:>7.2f} {r['frac_mm']:>6.2f}"
      + (f" {r['dense_ratio']:>27.2f}x" if dense else "")
    )


def _measure(a, cfg, hf, model, seq, mm_rate, median_seconds):
  """Times one training step of both models at `seq` tokens per row; prints and returns."""
  import statistics

  from flax import nnx
  import jax
  import jax.numpy as jnp
  import torch

  from chronoforge_jax.models import layers
  from tests import hf_reference

  rng = np.random.default_rng(0)
  n_video = int(np.prod(a.grid)) // 4 + 4  # merged tokens + start/end + 2 text
  before = max(1, (seq - n_video) // 2)
  after = max(0, seq - n_video - before)
  inp = hf_reference.video_prompt_batch(
    cfg, [tuple(a.grid)] * a.batch, [(before, after)] * a.batch, rng
  )
  tokens = int(inp["attention_mask"].sum())
  grid = inp["video_grid_thw"]
  mask_f = inp["attention_mask"].astype(np.float32)
  print(
    f"\n== {a.batch} x {inp['input_ids'].shape[1]} tokens "
    f"({int((inp['input_ids'] == cfg.video_token_id).sum())} video)"
  )

  # --- NNX: one jitted forward+backward -------------------------------------------------
  graphdef, params = nnx.split(model)

  def loss_fn(params, ids, mask, pix):
    m = nnx.merge(graphdef, params)
    logits = m(ids, mask, pix, grid)
    return jnp.sum(jnp.mean(logits**2, -1) * mask) / jnp.sum(mask)

  step = jax.jit(jax.value_and_grad(loss_fn))
  args = (
    params,
    jnp.asarray(inp["input_ids"]),
    jnp.asarray(mask_f),
    jnp.asarray(inp["pixel_values_videos"]),
  )
  compiled = step.lower(*args).compile()
  dense = None
  if a.dense_cpu_attention:
    layers.CPU_BLOCKED = False
    try:
      dense = jax.jit(jax.value_and_grad(loss_fn)).lower(*args).compile()
    finally:
      layers.CPU_BLOCKED = True
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  step_flops = float(cost.get("flops", 0.0))
  jax_loss = float(compiled(*args)[0])

  # --- transformers: eager forward+backward ------------------------------------------
  t_inp = {k: torch.from_numpy(np.asarray(v)) for k, v in inp.items()}
  t_mask = torch.from_numpy(mask_f)

  def torch_step():
    hf.zero_grad(set_to_none=True)
    logits = hf(**t_inp).logits
    loss = (logits.pow(2).mean(-1) * t_mask).sum() / t_mask.sum()
    loss.backward()
    return loss

  torch_loss = float(torch_step().detach())

  # Alternate the two so that a busy machine slows both alike.
  jax_times, torch_times, dense_times = [], [], []
  for _ in range(a.rounds):
    jax_times.append(median_seconds(lambda: compiled(*args), a.iters))
    torch_times.append(median_seconds(torch_step, a.iters))
    if dense is not None:
      dense_times.append(median_seconds(lambda: dense(*args), a.iters))
  ratios = [t / j for j, t in zip(jax_times, torch_times)]
  jax_time, torch_time = statistics.median(jax_times), statistics.median(torch_times)

  jax_tps, torch_tps = tokens / jax_time, tokens / torch_time
  ratio = statistics.median(ratios)
  print(
    f"loss: nnx {jax_loss:.6g}  transformers {torch_loss:.6g}  (same weights; rel diff "
    f"{abs(jax_loss - torch_loss) / abs(torch_loss):.1e})"
  )
  print(
    f"fwd+bwd tokens/s: nnx {jax_tps:,.0f}  transformers {torch_tps:,.0f}  "
    f"ratio nnx/transformers {ratio:.2f}x"
    + (
      f" (median of {a.rounds} rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
      if a.rounds > 1
      else ""
    )
  )
  dense_ratio = None
  if dense is not None:
    dense_ratio = statistics.median([t / j for j, t in zip(dense_times, torch_times)])
    dense_loss = float(dense(*args)[0])
    print(
      f"nnx with dense CPU attention: {tokens / statistics.median(dense_times):,.0f} "
      f"tokens/s, ratio nnx/transformers {dense_ratio:.2f}x (loss {dense_loss:.6g}); "
      f"query-blocked / dense: "
      f"{statistics.median([d / j for j, d in zip(jax_times, dense_times)]):.2f}x"
    )
  rate = step_flops / jax_time
  if step_flops:
    print(
      f"nnx step: {step_flops / 1e9:.2f} GFLOP (XLA cost analysis) in "
      f"{jax_time * 1e3:.1f} ms = {rate / 1e9:.2f} GFLOP/s; fraction of matmul rate "
      f"{rate / mm_rate:.2f}"
    )
  else:
    print("XLA reported no FLOP count for the step on this backend")
  return dict(
    seq=seq,
    nnx_tps=jax_tps,
    hf_tps=torch_tps,
    ratio=ratio,
    nnx_ms=jax_time * 1e3,
    hf_ms=torch_time * 1e3,
    gflop=step_flops / 1e9,
    frac_mm=rate / mm_rate,
    dense_ratio=dense_ratio,
  )


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  main()
