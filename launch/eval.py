r"""Evaluates a checkpoint on a preprocessed benchmark (VideoMME, LVBench, synthetic, ...).

Every setting is a field of the eval config (configs/eval.py, variants default, demo and
smoke), set with --config=configs/eval.py:VARIANT and overridden with --config.FIELD=VALUE
(a typo in a field name fails at once); the config's docstring lists every field.

  python -m launch.eval --config=configs/eval.py --config.data_dir=data/videomme \
      --config.checkpoint=runs/kf_grpo/checkpoints --config.model.preset=qwen2_5_vl_7b \
      --config.model.hf_dir=/models/Qwen2.5-VL-7B-Instruct --config.tad.k=32 \
      --config.out_dir=out/eval_videomme
  # The demo's model on a fresh held-out split (another seed of the synthetic set):
  python -m launch.preprocess --config=configs/data.py:demo --format synthetic \
      --config.preprocess.synthetic.seed=7 --video_dir demo_out/synthetic_s7 \
      --out demo_out/heldout_s7 --split eval
  python -m launch.eval --config=configs/eval.py:demo --config.data_dir=demo_out/heldout_s7 \
      --config.checkpoint=demo_out/sft/checkpoints --config.out_dir=demo_out/eval_s7

Fields: data_dir (the benchmark), checkpoint (a training run's checkpoint directory, one
step directory, or a params-only directory; empty: model.hf_dir's safetensors),
random_init, tokenizer_dir (empty: model.hf_dir's, else <data_dir>/tokenizer), out_dir,
workdir (a training run: its curves go into the report), model.* (preset, hf_dir, dtype,
param_dtype, attention_impl, match_tokenizer), tad.* (k and the TAD settings), eval.*
(selectors, mode, batch_size, max_new_tokens, answer_template, prompt_template, scoring,
patch_mode, frame_orders, frame_order_seed, max_questions, prompt_buckets), mesh.*
(data, fsdp, tensor). Tuples are Python literals: --config.eval.selectors="('tad',)".
eval.scoring (lmms_eval: lmms-eval's VideoMME rule, comparable with published numbers;
lenient: the project's reader) and eval.prompt_template (short, videor1) default to the
training run's settings (eval_defaults.json in its workdir), else lenient and short;
every result and report names the scoring it used.

Devices: one mesh over all devices (config.mesh; default all on data, so the batch is
split and the params replicated; use fsdp/tensor for models too large for one device).
Multi-host: start the same command on every host with --coordinator_address,
--num_processes and --process_id (or --distributed on TPU/SLURM); process 0 writes.

Writes into config.out_dir, per selector and frame order, `<selector>_k<K>_<mode>
[_<order>].{jsonl,json,md}` (per-question records, accuracy tables, Markdown),
`comparison.{md,json}` when several ran, and `report.md` with accuracy bars (and
training curves with config.workdir). Files are replaced only by complete results. Exit
code 2 for unusable settings (a bad config field, a missing or empty data dir or
checkpoint).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

from configs import common
from configs import eval as eval_config
from launch import multihost, tools

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  os.path.join(tools.ROOT, "configs", "eval.py"),
  "Eval config: configs/eval.py[:default|demo|smoke]. Override any field with "
  "--config.FIELD=VALUE, e.g. --config.data_dir=data/videomme "
  "--config.checkpoint=runs/x/checkpoints --config.eval.mode=likelihood --config.tad.k=32 "
  "(fields: configs/eval.py).",
  lock_config=True,
)
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bars.")
flags.adopt_module_key_flags(multihost)  # --help lists the multi-process flags too.


class UsageError(ValueError):
  """An argument points at nothing usable; the message says what was expected."""


def check_inputs(config: ml_collections.ConfigDict) -> None:
  """Fails fast (before any model loads) on a missing/empty data dir or checkpoint."""
  from chronoforge_jax.data import records

  data_dir = config.data_dir
  if not data_dir:
    raise UsageError("--config.data_dir is required (a launch/preprocess output folder)")
  if not os.path.isdir(data_dir):
    raise UsageError(
      f"--config.data_dir={data_dir!r}: no such directory; preprocess the "
      "benchmark first (python -m launch.preprocess --out DIR ...)"
    )
  try:
    index = records.load_index(data_dir)
  except FileNotFoundError as e:
    raise UsageError(f"--config.data_dir={data_dir!r}: {e}") from None
  if not index.get("num_questions"):
    raise UsageError(
      f"--config.data_dir={data_dir!r} holds no questions (all rejected? see "
      f"{os.path.join(data_dir, records.REJECTED)})"
    )
  for field, path in (("checkpoint", config.checkpoint), ("model.hf_dir", config.model.hf_dir)):
    if path and not os.path.isdir(path):
      raise UsageError(f"--config.{field}={path!r}: no such directory")
    if path and not os.listdir(path):
      raise UsageError(f"--config.{field}={path!r} is empty; expected a checkpoint")
  if not config.checkpoint and not config.model.hf_dir and not config.random_init:
    raise UsageError(
      "give --config.checkpoint (trained params) or --config.model.hf_dir (base model "
      "weights); --config.random_init=true evaluates random weights for smoke tests"
    )


def run(config: ml_collections.ConfigDict, *, progress: bool = True) -> dict:
  """Loads the model, evaluates each selector and frame order, writes results and report.

  With several processes (after `jax.distributed.initialize`), every process runs this
  on the same data over one mesh of all devices; process 0 prints and writes.
  `eval.scoring` and `eval.prompt_template` default to the training run's (its
  workdir's eval_defaults.json, found from `checkpoint`), else "lenient" and "short".

  Args:
    config: an eval config (configs/eval.py) with absolute paths.
    progress: show progress bars.

  Returns:
    {result name: EvalResult}, in the order they ran.
  """
  check_inputs(config)
  import jax
  import jax.numpy as jnp

  from chronoforge_jax import sharding
  from chronoforge_jax import tokenizer as tokenizer_lib
  from chronoforge_jax.evaluation import evaluator as eval_lib
  from chronoforge_jax.evaluation import report
  from chronoforge_jax.evaluation import results as results_lib
  from chronoforge_jax.rl import scoring as scoring_lib
  from chronoforge_jax.train import state as state_lib

  def say(message):
    if jax.process_index() == 0:
      print(message, flush=True)

  trained, found = scoring_lib.read_eval_defaults(config.checkpoint)
  defaults = dict(
    scoring=config.eval.scoring or trained.get("scoring") or "lenient",
    prompt_template=config.eval.prompt_template or trained.get("prompt_template") or "short",
  )
  # Every run's settings, checked (EvalSettings) before anything loads. Frame order
  # outer, selectors inner: the comparison's last column (last run minus first) is
  # TAD's gain over uniform keyframes when only "ordered" frames run.
  runs = [
    eval_lib.EvalSettings.from_config(config, selector=selector, frame_order=order, **defaults)
    for order in config.eval.frame_orders
    for selector in config.eval.selectors
  ]
  say(
    f"eval: prompt template {defaults['prompt_template']!r}, scoring {defaults['scoring']!r}"
    + (f" (defaults from {found})" if found else "")
  )

  m = config.mesh
  try:
    mesh = sharding.make_mesh((m.data, m.fsdp, m.tensor))
  except ValueError as e:
    raise UsageError(f"--config.mesh ({m.data}, {m.fsdp}, {m.tensor}): {e}") from None
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.eval.batch_size % rows:
    raise UsageError(
      f"--config.eval.batch_size={config.eval.batch_size} is not divisible by the mesh's "
      f"data x fsdp = {rows} devices; use a multiple of {rows}"
    )

  hf_dir = config.model.hf_dir
  tok_dir = config.tokenizer_dir or (
    hf_dir
    if hf_dir and os.path.exists(os.path.join(hf_dir, "tokenizer.json"))
    else os.path.join(config.data_dir, "tokenizer")
  )
  tok = tokenizer_lib.Tokenizer.from_dir(tok_dir)
  model_name = hf_dir or config.model.preset
  source = config.checkpoint or hf_dir or "random weights"
  say(f"eval: loading {model_name} from {source}")
  start = time.perf_counter()
  model = eval_lib.load_model(
    state_lib.model_config(config, tok),
    checkpoint=config.checkpoint,
    hf_dir=hf_dir,
    random_init=config.random_init,
    dtype=jnp.dtype(config.model.dtype),
    param_dtype=jnp.dtype(config.model.param_dtype),
    attention_impl=config.model.attention_impl,
    mesh=mesh,
  )
  say(f"eval: model ready in {time.perf_counter() - start:.1f} s")
  results = {}
  for settings in runs:
    label = settings.selector + (
      "" if settings.frame_order == "ordered" else f" ({settings.frame_order} frames)"
    )
    say(
      f"eval: {label} keyframes, K={settings.num_keyframes}, mode={settings.mode} "
      "(first batch compiles)"
    )
    r = eval_lib.evaluate(
      model,
      config.data_dir,
      tok,
      settings,
      out_dir=config.out_dir,
      progress=progress,
      mesh=mesh,
      meta={"checkpoint": source, "model": model_name},
    )
    results[r.name] = r
    o = r.tables["overall"]
    say(
      f"eval: {label}: accuracy {100 * o['accuracy']:.1f}% on {o['num_questions']} "
      f"questions ({100 * o['unparseable_fraction']:.1f}% unparseable, scoring "
      f"{r.settings['scoring']}) in {r.settings['seconds']:.1f} s"
    )
  if jax.process_index() != 0:
    return results  # Process 0 writes the comparison and the report.
  out = config.out_dir
  if len(results) > 1:
    paths = results_lib.write_comparison(out, list(results.values()))
    say(results_lib.compare_results(list(results.values())))
    say(results_lib.scoring_note(list(results.values())))
    say(f"eval: comparison -> {paths['md']}")
  workdir = config.workdir
  metrics = workdir if workdir and os.path.exists(os.path.join(workdir, "metrics.jsonl")) else None
  if workdir and metrics is None:
    say(f"eval: no metrics.jsonl in --config.workdir={workdir!r}; report without curves")
  path = report.write_report(out, results=list(results.values()), metrics=metrics)
  say(f"eval: report -> {path}")
  return results


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore step at INFO.
  # Paths as the user typed them, relative to this folder: made absolute once, here.
  config = tools.absolute_config_paths(_CONFIG.value, eval_config.PATHS)
  try:
    eval_config.validate(config)
  except common.ConfigError as e:
    print(f"eval: error: {e}", file=sys.stderr)
    return 2
  multihost.initialize()
  try:
    run(config, progress=not _QUIET.value)
  except (UsageError, FileNotFoundError, ValueError) as e:
    print(f"eval: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
