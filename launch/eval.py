r"""Evaluates a checkpoint on a preprocessed benchmark (VideoMME, LVBench, synthetic, ...).

  python -m launch.eval --data_dir data/videomme --checkpoint runs/kf_grpo/checkpoints \
      --model_preset qwen2_5_vl_7b --hf_dir /models/Qwen2.5-VL-7B-Instruct \
      --selector both --k 32 --mode generate --out out/eval_videomme
  # The demo's model on a fresh held-out split (another seed of the synthetic set):
  python -m launch.preprocess --config=configs/data.py:demo --format synthetic \
      --config.preprocess.synthetic.seed=7 --video_dir demo_out/synthetic_s7 \
      --out demo_out/heldout_s7 --split eval
  python -m launch.eval --data_dir demo_out/heldout_s7 --checkpoint demo_out/sft/checkpoints \
      --model_preset small --selector both --k 8 --patch_mode duplicate --mode likelihood \
      --answer_template '<think></think><answer>{letter}</answer>' --out demo_out/eval_s7

--checkpoint is a training run's checkpoint directory (its latest step), one step
directory, or a params-only directory (`checkpoint.save_params`, e.g. a converted HF
model). Without --checkpoint, --hf_dir's safetensors are evaluated (the base model).
The tokenizer comes from --tokenizer_dir, else --hf_dir, else <data_dir>/tokenizer.
TAD settings come from --config=configs/tad.py (fields via --config.tad.<field>=...).
--scoring (lmms_eval: lmms-eval's VideoMME rule, comparable with published numbers;
lenient: the project's reader) and --prompt_template (short, videor1) default to the
training run's settings (eval_defaults.json in its workdir), else lenient and short; every
result and report names the scoring it used.

Devices: one mesh over all devices (--mesh data,fsdp,tensor; default all on data, so the
batch is split and the params replicated; use fsdp/tensor for models too large for one
device). Multi-host: start the same command on every host with --coordinator_address,
--num_processes and --process_id (or --distributed on TPU/SLURM); process 0 writes.

Writes into --out, per selector, `<selector>_k<K>_<mode>.{jsonl,json,md}` (per-question
records, accuracy tables, Markdown), `comparison.{md,json}` when both selectors run, and
`report.md` with accuracy bars (and training curves with --workdir). Files are replaced
only by complete results. Exit code 2 for unusable arguments (missing or empty data dir
or checkpoint).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from launch import multihost, tools

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "configs", "tad.py")),
  "TAD config (configs/tad.py[:variant]) for --selector=tad.",
  lock_config=True,
)
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "Preprocessed benchmark folder (launch/preprocess --out)."
)
_CHECKPOINT = flags.DEFINE_string(
  "checkpoint",
  "",
  "Training checkpoint dir, step dir, or params-only dir. Empty: evaluate --hf_dir's weights.",
)
_PRESET = flags.DEFINE_string(
  "model_preset",
  "qwen2_5_vl_7b",
  "Model preset (tiny, qwen2_5_vl_3b, qwen2_5_vl_7b, ...); "
  "ignored when --hf_dir gives a config.json.",
)
_HF_DIR = flags.DEFINE_string(
  "hf_dir", "", "Local HF Qwen2.5-VL folder (config.json, tokenizer.json, safetensors)."
)
_TOKENIZER_DIR = flags.DEFINE_string("tokenizer_dir", "", "Folder with tokenizer.json.")
_SELECTOR = flags.DEFINE_enum(
  "selector", "both", ["tad", "uniform", "both"], "Keyframe selector(s) to evaluate."
)
_K = flags.DEFINE_integer("k", 16, "Keyframes per video (even with --patch_mode=pair).")
_PATCH_MODE = flags.DEFINE_enum(
  "patch_mode",
  "pair",
  ["pair", "duplicate"],
  "pair: two consecutive keyframes per "
  "temporal patch; duplicate: every keyframe repeated into a patch of its own (exact "
  "per-frame encoding, twice the video tokens).",
)
_MODE = flags.DEFINE_enum(
  "mode",
  "generate",
  ["generate", "likelihood"],
  "generate: greedy answer + letter extraction; likelihood: "
  "argmax of each option letter's log-prob.",
)
_OUT = flags.DEFINE_string("out", "eval_out", "Output folder.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Questions per forward pass.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 512, "Answer length cap (generate).")
_MAX_Q = flags.DEFINE_integer("max_questions", None, "Evaluate only the first N questions.")
_PROMPT_BUCKETS = flags.DEFINE_list(
  "prompt_buckets", ["128", "256", "512"], "Prompt lengths without video tokens (few compiles)."
)
_WORKDIR = flags.DEFINE_string(
  "workdir", "", "Training workdir: adds its curves to the report (metrics.jsonl)."
)
_DTYPE = flags.DEFINE_enum(
  "dtype", "bfloat16", ["float32", "bfloat16", "float16"], "Compute dtype."
)
_PARAM_DTYPE = flags.DEFINE_enum(
  "param_dtype", "float32", ["float32", "bfloat16"], "Dtype the params are held in."
)
_MATCH_TOKENIZER = flags.DEFINE_bool(
  "match_tokenizer",
  True,
  "Vocab size and special ids from the tokenizer (as the "
  "trainer's config.model.match_tokenizer; required for the tiny tokenizer).",
)
_RANDOM_INIT = flags.DEFINE_bool(
  "random_init", False, "Evaluate random weights when no checkpoint is given (smoke tests only)."
)
_ATTENTION = flags.DEFINE_enum(
  "attention_impl",
  "xla",
  ["xla", "chunked", "cudnn", "splash"],
  "Decoder attention: xla (one "
  "logits tensor), chunked (query blocks: long prompts in less memory), cudnn (flash "
  "attention on NVIDIA GPUs), splash (the Pallas flash kernel on TPUs).",
)
_MESH = flags.DEFINE_list(
  "mesh",
  ["-1", "1", "1"],
  "Device mesh data,fsdp,tensor over all processes' devices "
  "(-1: the rest). The batch is split over data x fsdp, the params over fsdp x tensor.",
)
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bars.")
_ANSWER_TEMPLATE = flags.DEFINE_string(
  "answer_template",
  "<answer>{letter}</answer>",
  "--mode=likelihood: the completion scored for each option letter; match the format "
  "the model was trained to answer in (the demo's: '<think></think><answer>{letter}"
  "</answer>').",
)
_FRAME_ORDER = flags.DEFINE_enum(
  "frame_order",
  "ordered",
  ["ordered", "shuffled", "zeroed"],
  "ordered: the benchmark. Controls: shuffled (each question's keyframes in a random "
  "order, timestamps kept: what order is worth) or zeroed (black frames: what the text "
  "alone gives).",
)
_SCORING = flags.DEFINE_enum(
  "scoring",
  None,
  ["lmms_eval", "lenient"],
  "How a generated answer is read: lmms_eval (lmms-eval's VideoMME rule: numbers "
  "comparable with published ones) or lenient (the project's reader). Default: the "
  "training run's input.eval_scoring (eval_defaults.json in its workdir), else lenient.",
)
_PROMPT_TEMPLATE = flags.DEFINE_enum(
  "prompt_template",
  None,
  ["short", "videor1"],
  "Prompt template (chronoforge_jax/data/prompts.py). Default: the one the checkpoint "
  "was trained with (eval_defaults.json in its workdir), else short.",
)
flags.adopt_module_key_flags(multihost)  # --help lists the multi-process flags too.


class UsageError(ValueError):
  """An argument points at nothing usable; the message says what was expected."""


def check_args(
  *,
  data_dir: str,
  checkpoint: str,
  hf_dir: str,
  random_init: bool,
  k: int,
  patch_mode: str = "pair",
) -> None:
  """Fails fast (before JAX starts) on a missing/empty data dir or checkpoint."""
  from chronoforge_jax.data import records

  if not data_dir:
    raise UsageError("--data_dir is required (a launch/preprocess output folder)")
  if not os.path.isdir(data_dir):
    raise UsageError(
      f"--data_dir={data_dir!r}: no such directory; preprocess the "
      "benchmark first (python -m launch.preprocess --out DIR ...)"
    )
  try:
    index = records.load_index(data_dir)
  except FileNotFoundError as e:
    raise UsageError(f"--data_dir={data_dir!r}: {e}") from None
  if not index.get("num_questions"):
    raise UsageError(
      f"--data_dir={data_dir!r} holds no questions (all rejected? see "
      f"{os.path.join(data_dir, records.REJECTED)})"
    )
  for flag, path in (("--checkpoint", checkpoint), ("--hf_dir", hf_dir)):
    if path and not os.path.isdir(path):
      raise UsageError(f"{flag}={path!r}: no such directory")
    if path and not os.listdir(path):
      raise UsageError(f"{flag}={path!r} is empty; expected a checkpoint")
  if not checkpoint and not hf_dir and not random_init:
    raise UsageError(
      "give --checkpoint (trained params) or --hf_dir (base model weights); "
      "--random_init evaluates random weights for smoke tests"
    )
  if patch_mode == "pair" and (k < 2 or k % 2):
    raise UsageError(
      f"--k={k}: need an even number >= 2 (keyframes pair into patches; "
      "--patch_mode=duplicate takes any K >= 1)"
    )
  if k < 1:
    raise UsageError(f"--k={k}: need K >= 1")


def run(
  *,
  data_dir: str,
  checkpoint: str = "",
  model_preset: str = "qwen2_5_vl_7b",
  hf_dir: str = "",
  tokenizer_dir: str = "",
  selector: str = "both",
  k: int = 16,
  mode: str = "generate",
  out: str = "eval_out",
  batch_size: int = 8,
  max_new_tokens: int = 512,
  max_questions: int | None = None,
  prompt_buckets=(128, 256, 512),
  workdir: str = "",
  dtype: str = "bfloat16",
  param_dtype: str = "float32",
  match_tokenizer: bool = True,
  random_init: bool = False,
  tad_kwargs=None,
  progress: bool = True,
  patch_mode: str = "pair",
  attention_impl: str = "xla",
  mesh_shape=(-1, 1, 1),
  frame_order: str = "ordered",
  answer_template: str = "<answer>{letter}</answer>",
  scoring: str | None = None,
  prompt_template: str | None = None,
) -> dict:
  """Loads the model, evaluates each selector, writes results, comparison and report.

  With several processes (after `jax.distributed.initialize`), every process runs this
  on the same data over one mesh of all devices; process 0 prints and writes.
  `scoring` and `prompt_template` default to the training run's (its workdir's
  eval_defaults.json, found from `checkpoint`), else "lenient" and "short".

  Returns:
    {selector: EvalResult}.
  """
  check_args(
    data_dir=data_dir,
    checkpoint=checkpoint,
    hf_dir=hf_dir,
    random_init=random_init,
    k=k,
    patch_mode=patch_mode,
  )
  import jax
  import jax.numpy as jnp

  from chronoforge_jax import sharding
  from chronoforge_jax import tokenizer as tokenizer_lib
  from chronoforge_jax.evaluation import evaluator as eval_lib
  from chronoforge_jax.evaluation import report

  def say(message):
    if jax.process_index() == 0:
      print(message, flush=True)

  from chronoforge_jax.rl import scoring as scoring_lib

  trained, found = scoring_lib.read_eval_defaults(checkpoint)
  scoring = scoring or trained.get("scoring") or "lenient"
  prompt_template = prompt_template or trained.get("prompt_template") or "short"
  say(
    f"eval: prompt template {prompt_template!r}, scoring {scoring!r}"
    + (f" (defaults from {found})" if found else "")
  )

  try:
    mesh = sharding.make_mesh(tuple(int(x) for x in mesh_shape))
  except ValueError as e:
    raise UsageError(f"--mesh={','.join(str(x) for x in mesh_shape)}: {e}") from None
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % rows:
    raise UsageError(
      f"--batch_size={batch_size} is not divisible by the mesh's data x fsdp "
      f"= {rows} devices; use a multiple of {rows}"
    )

  tok_dir = tokenizer_dir or (
    hf_dir
    if hf_dir and os.path.exists(os.path.join(hf_dir, "tokenizer.json"))
    else os.path.join(data_dir, "tokenizer")
  )
  tok = tokenizer_lib.Tokenizer.from_dir(tok_dir)
  cfg = eval_lib.model_config(
    preset=model_preset, hf_dir=hf_dir, tokenizer=tok, match_tokenizer=match_tokenizer
  )
  source = checkpoint or hf_dir or "random weights"
  say(f"eval: loading {model_preset if not hf_dir else hf_dir} from {source}")
  start = time.perf_counter()
  model = eval_lib.load_model(
    cfg,
    checkpoint=checkpoint,
    hf_dir=hf_dir,
    random_init=random_init,
    dtype=jnp.dtype(dtype),
    param_dtype=jnp.dtype(param_dtype),
    attention_impl=attention_impl,
    mesh=mesh,
  )
  say(f"eval: model ready in {time.perf_counter() - start:.1f} s")
  # Uniform first, so the comparison's last column is TAD's gain over uniform frames.
  selectors = ("uniform", "tad") if selector == "both" else (selector,)
  results = {}
  for name in selectors:
    say(f"eval: {name} keyframes, K={k}, mode={mode} (first batch compiles)")
    results[name] = eval_lib.evaluate(
      model,
      data_dir,
      tok,
      selector=name,
      num_keyframes=k,
      batch_size=batch_size,
      mode=mode,
      max_new_tokens=max_new_tokens,
      max_questions=max_questions,
      prompt_buckets=tuple(int(b) for b in prompt_buckets),
      select_kwargs=tad_kwargs,
      out_dir=out,
      progress=progress,
      patch_mode=patch_mode,
      mesh=mesh,
      frame_order=frame_order,
      answer_template=answer_template,
      scoring=scoring,
      prompt_template=prompt_template,
      name=None if frame_order == "ordered" else f"{name}_k{k}_{mode}_{frame_order}",
      meta={"checkpoint": source, "model": model_preset if not hf_dir else hf_dir},
    )
    r = results[name]
    o = r.tables["overall"]
    say(
      f"eval: {name}: accuracy {100 * o['accuracy']:.1f}% on {o['num_questions']} "
      f"questions ({100 * o['unparseable_fraction']:.1f}% unparseable, scoring "
      f"{r.settings['scoring']}) in {r.settings['seconds']:.1f} s"
    )
  if jax.process_index() != 0:
    return results  # Process 0 writes the comparison and the report.
  if len(results) > 1:
    paths = eval_lib.write_comparison(out, list(results.values()))
    say(eval_lib.compare_results(list(results.values())))
    say(eval_lib.scoring_note(list(results.values())))
    say(f"eval: comparison -> {paths['md']}")
  metrics = workdir if workdir and os.path.exists(os.path.join(workdir, "metrics.jsonl")) else None
  if workdir and metrics is None:
    say(f"eval: no metrics.jsonl in --workdir={workdir!r}; report without curves")
  path = report.write_report(out, results=list(results.values()), metrics=metrics)
  say(f"eval: report -> {path}")
  return results


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from configs import tad as tad_config

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore step at INFO.
  multihost.initialize()
  try:
    # Paths as the user typed them, relative to this folder: made absolute once, here.
    path = tools.absolute
    run(
      data_dir=path(_DATA_DIR.value or ""),
      checkpoint=path(_CHECKPOINT.value),
      model_preset=_PRESET.value,
      hf_dir=path(_HF_DIR.value),
      tokenizer_dir=path(_TOKENIZER_DIR.value),
      selector=_SELECTOR.value,
      k=_K.value,
      mode=_MODE.value,
      out=path(_OUT.value),
      batch_size=_BATCH.value,
      max_new_tokens=_MAX_NEW.value,
      max_questions=_MAX_Q.value,
      prompt_buckets=_PROMPT_BUCKETS.value,
      workdir=path(_WORKDIR.value),
      dtype=_DTYPE.value,
      param_dtype=_PARAM_DTYPE.value,
      match_tokenizer=_MATCH_TOKENIZER.value,
      random_init=_RANDOM_INIT.value,
      tad_kwargs=tad_config.tad_kwargs(_CONFIG.value.tad),
      progress=not _QUIET.value,
      patch_mode=_PATCH_MODE.value,
      attention_impl=_ATTENTION.value,
      mesh_shape=_MESH.value,
      frame_order=_FRAME_ORDER.value,
      answer_template=_ANSWER_TEMPLATE.value,
      scoring=_SCORING.value,
      prompt_template=_PROMPT_TEMPLATE.value,
    )
  except (UsageError, FileNotFoundError, ValueError) as e:
    print(f"eval: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  app.run(main)
