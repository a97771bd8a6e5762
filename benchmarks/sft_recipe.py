r"""The demo's SFT recipe over several seeds: does the small model read the video?

  .venv/bin/python benchmarks/sft_recipe.py --out /tmp/sft_recipe --seeds 0,1,2

Makes the demo's synthetic colour-order set (configs/data.py:demo, once), then per seed
trains `configs/kf_grpo.py:demo` up to its sft_steps and evaluates the held-out split
four ways: TAD keyframes, uniform keyframes, the TAD keyframes shuffled, and black frames.
Prints one row per seed (with the training time and the fraction of it spent waiting for
the input pipeline) and the mean, and writes `summary.json`. Finished seeds are skipped
on a rerun (their summary is kept in <out>/seed<N>_steps<S>/summary.json).

Reading it: TAD far above uniform says the keyframes matter; shuffled and black near
chance (25%) say the answer comes from the frames and their order, not the text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags, logging

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

_OUT = flags.DEFINE_string("out", "/tmp/sft_recipe", "Output folder (reused to resume).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_STEPS = flags.DEFINE_integer("steps", None, "SFT steps (default: the demo config's).")

_CONDITIONS = (("tad", "ordered"), ("uniform", "ordered"), ("tad", "shuffled"), ("tad", "zeroed"))


def make_data(out: str) -> tuple[str, str]:
  """The demo's data (configs/data.py:demo) via launch.preprocess, as `make demo` makes it."""
  dirs = {}
  for split in ("train", "eval"):
    dirs[split] = os.path.join(out, "data", split)
    subprocess.run(
      [
        sys.executable,
        "-m",
        "launch.preprocess",
        "--config=configs/data.py:demo",
        "--format=synthetic",
        f"--video_dir={os.path.join(out, 'synthetic')}",
        f"--out={dirs[split]}",
        f"--split={split}",
        "--quiet",
      ],
      check=True,
      cwd=_ROOT,
    )
  return dirs["train"], dirs["eval"]


def run_seed(out: str, train_dir: str, eval_dir: str, seed: int) -> dict:
  from chronoforge_jax import tokenizer as tokenizer_lib
  from chronoforge_jax.evaluation import evaluator as eval_lib
  from chronoforge_jax.train import loop
  from chronoforge_jax.train import state as state_lib
  from configs import kf_grpo

  config = kf_grpo.get_config("demo")
  steps = _STEPS.value or config.sft_steps
  workdir = os.path.join(out, f"seed{seed}_steps{steps}")
  summary_path = os.path.join(workdir, "summary.json")
  if os.path.exists(summary_path):
    print(f"seed {seed}: done before, kept", flush=True)
    with open(summary_path) as f:
      return json.load(f)
  config.seed = config.input.seed = seed
  config.sft_steps = steps
  config.total_steps = config.sft_steps
  config.input.data_dir = train_dir
  start = time.perf_counter()
  metrics = loop.train_and_evaluate(config, workdir)
  row = {
    "seed": seed,
    "steps": config.sft_steps,
    "train_s": round(time.perf_counter() - start, 1),
    "data_wait_frac": metrics.get("time/data_wait_frac"),
  }
  tok = tokenizer_lib.Tokenizer.from_dir(os.path.join(train_dir, "tokenizer"))
  model = eval_lib.load_model(
    state_lib.model_config(config, tok), checkpoint=os.path.join(workdir, "checkpoints")
  )
  settings = eval_lib.EvalSettings.from_train_config(
    config, mode="likelihood", answer_template="<think></think><answer>{letter}</answer>"
  )
  for selector, order in _CONDITIONS:
    result = eval_lib.evaluate(
      model,
      eval_dir,
      tok,
      settings.replace(selector=selector, frame_order=order),
      progress=False,
      name=f"{selector}_{order}",
      out_dir=workdir,
    )
    row[f"{selector}_{order}"] = result.tables["overall"]["accuracy"]
    row["num_questions"] = result.tables["overall"]["num_questions"]
  tmp = summary_path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(row, f, indent=1)
  os.replace(tmp, summary_path)
  return row


def main(argv) -> int:
  del argv
  logging.set_verbosity(logging.WARNING)
  out = os.path.abspath(_OUT.value)
  os.makedirs(out, exist_ok=True)
  train_dir, eval_dir = make_data(out)
  rows = [run_seed(out, train_dir, eval_dir, int(s)) for s in _SEEDS.value]
  names = [f"{s}_{o}" for s, o in _CONDITIONS]
  print("\nseed  steps  train_s  wait   " + "  ".join(f"{n:>16}" for n in names))
  for r in rows:
    print(
      f"{r['seed']:>4}  {r['steps']:>5}  {r['train_s']:>7}  {r['data_wait_frac']:.1%}  "
      + "  ".join(f"{r[n]:>16.1%}" for n in names)
    )
  mean = {n: sum(r[n] for r in rows) / len(rows) for n in names}
  print("mean" + " " * 24 + "  ".join(f"{mean[n]:>16.1%}" for n in names))
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump({"rows": rows, "mean": mean}, f, indent=1)
  return 0


if __name__ == "__main__":
  app.run(main)
