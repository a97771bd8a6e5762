r"""Compile time with scanned vs unrolled layers (`model.scan_layers`), side by side.

  python benchmarks/compile_bench.py                    # ~4 minutes on a 2-core CPU
  python benchmarks/compile_bench.py --layers 28 80 --skip_trainer
  python benchmarks/compile_bench.py --skip_decoder --trainer_repeats 2

Two measurements, each scanned and unrolled in the same run:

  1. decoder: jax.jit(jax.value_and_grad(loss)) of the text decoder (embedding, L layers,
     final norm, LM head; loss = mean squared logits) at 28 layers (Qwen2.5-VL-7B's depth)
     and 80 (72B), at a narrow width so it compiles on a CPU. Lowered from abstract
     params (nothing is allocated): "trace" is jit tracing + lowering to StableHLO,
     "compile" is XLA's compile of that program. Scan keeps both flat in depth; unrolled,
     both grow with it.
  2. trainer start-up: `launch.train --config=configs/kf_grpo.py:smoke` in a fresh
     process on synthetic smoke data, for one SFT step and one KF-GRPO step, so every
     program the trainer runs is compiled (SFT step, views, sampler prefill + decode,
     log-probs, GRPO step). Reported: the process's wall time and the first two steps'
     time (from the loop's start to the end of the first KF-GRPO step: all compiles plus
     two small steps of work), each the median over --trainer_repeats runs.

Prints two tables and the unrolled / scanned ratios. Timings are wall-clock on a shared
machine: other processes inflate them, so compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run from a checkout without installing: the package sits next to benchmarks/.
sys.path.insert(0, ROOT)


def _parse():
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--layers", type=int, nargs="+", default=(28, 80), help="decoder depths to compile"
  )
  p.add_argument("--hidden", type=int, default=64, help="decoder width")
  p.add_argument("--heads", type=int, default=4, help="query heads (kv heads = heads/2)")
  p.add_argument("--vocab", type=int, default=512, help="vocabulary size")
  p.add_argument("--batch", type=int, default=2, help="rows")
  p.add_argument("--seq", type=int, default=128, help="tokens per row")
  p.add_argument(
    "--remat",
    default="dots_no_batch",
    help="remat policy (the default config's); none | full | dots | dots_no_batch",
  )
  p.add_argument(
    "--trainer_repeats", type=int, default=1, help="trainer start-ups per setting (median reported)"
  )
  p.add_argument("--skip_decoder", action="store_true")
  p.add_argument("--skip_trainer", action="store_true")
  return p.parse_args()


# ------------------------------------------------------------------------------------
# 1. The decoder's jitted forward + backward.
# ------------------------------------------------------------------------------------


def decoder_compile_seconds(a, layers: int, scan: bool) -> tuple[float, float]:
  """(trace + lower seconds, XLA compile seconds) of the decoder's value_and_grad."""
  from flax import nnx
  import jax
  import jax.numpy as jnp

  from chronoforge_jax.models.config import TextConfig
  from chronoforge_jax.models.text import TextDecoder

  hd = a.hidden // a.heads
  t = hd // 2 // 4
  cfg = TextConfig(
    vocab_size=a.vocab,
    hidden_size=a.hidden,
    intermediate_size=2 * a.hidden,
    num_hidden_layers=layers,
    num_attention_heads=a.heads,
    num_key_value_heads=max(1, a.heads // 2),
    mrope_section=(t, (hd // 2 - t) // 2, hd // 2 - t - (hd // 2 - t) // 2),
  )
  abstract = nnx.eval_shape(
    lambda: TextDecoder(cfg, rngs=nnx.Rngs(0), remat_policy=a.remat, scan_layers=scan)
  )
  graphdef, params = nnx.split(abstract)

  def loss_fn(params, ids_bs, mask_bs):
    m = nnx.merge(graphdef, params)
    positions = jnp.broadcast_to(jnp.cumsum(mask_bs, axis=1)[None] - 1, (3,) + ids_bs.shape)
    logits = m.logits(m.hidden(m.embed_tokens(ids_bs), positions, mask_bs))
    return jnp.sum(jnp.mean(logits**2, -1) * mask_bs) / jnp.sum(mask_bs)

  ids = jax.ShapeDtypeStruct((a.batch, a.seq), jnp.int32)
  start = time.perf_counter()
  lowered = jax.jit(jax.value_and_grad(loss_fn)).lower(params, ids, ids)
  traced = time.perf_counter()
  lowered.compile()
  return traced - start, time.perf_counter() - traced


# ------------------------------------------------------------------------------------
# 2. The trainer's start-up.
# ------------------------------------------------------------------------------------


def _env():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  env.pop("XLA_FLAGS", None)
  return env


def make_smoke_data(root: str) -> str:
  """Preprocessed synthetic smoke shards (as tests/train/loop_test.py makes them)."""
  subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.preprocess",
      "--config=configs/data.py:smoke",
      "--format=synthetic",
      f"--video_dir={root}/videos",
      f"--out={root}/train",
      "--split=train",
      "--quiet",
    ],
    check=True,
    cwd=ROOT,
    env=_env(),
    capture_output=True,
  )
  return os.path.join(root, "train")


def trainer_startup_seconds(data_dir: str, workdir: str, scan: bool) -> tuple[float, float]:
  """(process wall seconds, first SFT + first KF-GRPO step seconds) of a smoke run."""
  cmd = [
    sys.executable,
    "-m",
    "launch.train",
    "--config=configs/kf_grpo.py:smoke",
    f"--workdir={workdir}",
    f"--config.input.data_dir={data_dir}",
    "--config.sft_steps=1",
    "--config.total_steps=2",
    # beta > 0: the reference log-probs program is compiled and run too.
    "--config.rl.beta=0.04",
    f"--config.model.scan_layers={scan}",
  ]
  start = time.perf_counter()
  run = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
  wall = time.perf_counter() - start
  if run.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stdout[-2000:]}{run.stderr[-3000:]}")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return wall, sum(r["time/step_s"] for r in records[:2])


# ------------------------------------------------------------------------------------


def _row(cells, widths):
  return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))


def main():
  a = _parse()
  import jax

  print(
    f"devices: {jax.devices()[0].platform} x{jax.device_count()}, {os.cpu_count()} "
    f"CPUs, load average {os.getloadavg()[0]:.1f}"
  )
  if not a.skip_decoder:
    print(
      f"\ndecoder jit(value_and_grad): width {a.hidden}, {a.heads} heads, vocab "
      f"{a.vocab}, batch {a.batch} x {a.seq} tokens, remat {a.remat}"
    )
    widths = (7, 10, 9, 11, 9, 19)
    print(
      _row(("layers", "layout", "trace s", "compile s", "total s", "unrolled / scanned"), widths)
    )
    for layers in a.layers:
      times = {scan: decoder_compile_seconds(a, layers, scan) for scan in (True, False)}
      ratio = sum(times[False]) / sum(times[True])
      for scan in (True, False):
        trace, comp = times[scan]
        print(
          _row(
            (
              layers,
              "scanned" if scan else "unrolled",
              f"{trace:.1f}",
              f"{comp:.1f}",
              f"{trace + comp:.1f}",
              f"{ratio:.1f}x" if not scan else "",
            ),
            widths,
          )
        )
  if not a.skip_trainer:
    print(
      f"\ntrainer start-up, configs/kf_grpo.py:smoke (1 SFT + 1 KF-GRPO step, every "
      f"program compiled), median of {a.trainer_repeats}"
    )
    widths = (10, 15, 20, 19)
    print(_row(("layout", "process s", "first 2 steps s", "unrolled / scanned"), widths))
    with tempfile.TemporaryDirectory() as root:
      data_dir = make_smoke_data(root)
      runs = {True: [], False: []}
      for r in range(a.trainer_repeats):
        for scan in (True, False):
          runs[scan].append(
            trainer_startup_seconds(data_dir, os.path.join(root, f"run_{scan}_{r}"), scan)
          )
      med = {
        scan: tuple(statistics.median(x[i] for x in runs[scan]) for i in range(2)) for scan in runs
      }
      for scan in (True, False):
        ratio = "" if scan else f"{med[False][1] / med[True][1]:.2f}x"
        print(
          _row(
            (
              "scanned" if scan else "unrolled",
              f"{med[scan][0]:.1f}",
              f"{med[scan][1]:.1f}",
              ratio,
            ),
            widths,
          )
        )


if __name__ == "__main__":
  main()
