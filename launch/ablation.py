r"""The paper's ablation in miniature: GRPO vs T-GRPO vs KF-GRPO, TAD vs uniform keyframes.

  python -m launch.ablation --config=configs/ablation.py --out=ablation_out  (make ablation)
  python -m launch.ablation --config=configs/ablation.py:quick --out=ablation_quick
  python -m launch.ablation --config=configs/ablation.py:smoke --out=/tmp/ablation_smoke
  python -m launch.ablation --config=configs/ablation.py --config.rl.steps=40 \
      --config.seeds='(0, 1)' --config.arm_overrides.kfgrpo.rl.saliency.alpha=0.5

Stages:
  1. data    the learnable synthetic set, preprocessed into train and held-out splits by
             `launch.preprocess` (as launch/demo.py does).
  2. sft     one SFT checkpoint (configs/kf_grpo.py:demo, every step SFT), evaluated.
  3. arms    every arm x training keyframe selector x seed, each starting from the SFT
             params (configs/kf_grpo.py:demo_rl + the arm's overrides), then
             evaluated on the held-out split with its own selector, with ordered and
             with shuffled keyframes.
  4. report  <out>/report.md: accuracy with 95% CIs over seeds, per question type, the
             ordered-minus-shuffled gap, reward curves, how often the saliency bonus fired.

Rerunning with the same --out resumes: finished stages (their summary.json) are skipped,
an interrupted training run continues from its own checkpoint, and the report is redone.
Arms and their settings are in configs/ablation.py.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from chronoforge_jax.evaluation import ablation
from configs import ablation as ablation_config
from configs import common
from configs import kf_grpo as kf_grpo_config
from launch import tools

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  os.path.join(tools.ROOT, "configs", "ablation.py"),
  "Ablation config: configs/ablation.py[:full|quick|smoke].",
  lock_config=True,
)
_OUT = flags.DEFINE_string("out", "ablation_out", "Output folder (reused to resume).")
_CACHE = flags.DEFINE_bool(
  "compilation_cache",
  True,
  "Keep XLA's compiled programs in <out>/jax_cache, so runs "
  "that differ only in seed or selector compile once.",
)


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO.

  config = _CONFIG.value
  out = os.path.abspath(_OUT.value)
  try:
    # Every config is checked before anything slow starts.
    ablation_config.validate(config)
    sft_base, rl_base = ablation_config.base_configs(config)
    ablation.build_configs(
      config,
      sft_base,
      rl_base,
      out=out,
      train_dir=os.path.join(out, "data", "train"),
      check_config=kf_grpo_config.validate,
    )
  except (common.ConfigError, ablation.ConfigMismatch) as e:
    print(f"ablation: {e}", file=sys.stderr, flush=True)
    return 2
  os.makedirs(out, exist_ok=True)
  if _CACHE.value:
    jax.config.update("jax_compilation_cache_dir", os.path.join(out, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

  start = time.perf_counter()
  print(f"== 1/4 data: synthetic temporal-QA set ({ablation_config.data_arg(config)})", flush=True)
  train_dir, eval_dir = tools.preprocess_synthetic(
    out, ablation_config.data_arg(config), who="ablation"
  )
  try:
    ablation.run_ablation(
      config,
      sft_base=sft_base,
      rl_base=rl_base,
      out=out,
      train_dir=train_dir,
      eval_dir=eval_dir,
      check_config=kf_grpo_config.validate,
    )
  except (common.ConfigError, ablation.ConfigMismatch) as e:
    print(f"ablation: {e}", file=sys.stderr, flush=True)
    return 2
  except InterruptedError as e:
    print(f"ablation: {e}", file=sys.stderr, flush=True)
    return 1
  print(f"\nablation done in {time.perf_counter() - start:.0f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
