r"""Evaluation of a checkpoint on a preprocessed benchmark: `python -m launch.eval`.

  python -m launch.eval --config=configs/eval.py --config.data_dir=data/videomme \
      --config.checkpoint=runs/kf_grpo/checkpoints \
      --config.model.hf_dir=/models/Qwen2.5-VL-7B-Instruct --config.tad.k=32

Variants:
  default  Qwen2.5-VL-7B (model.preset, or model.hf_dir's config.json), 16 keyframes in
           pairs, uniform and TAD keyframes compared, greedy answers (mode generate).
  demo     the demo's model and data (configs/kf_grpo.py:demo): the small preset on the
           synthetic colour-order set, K = 8 keyframes one per temporal patch, option
           scoring (mode likelihood) in the demo's answer format.
  smoke    the tiny preset in float32 with 4 keyframes and batches of 2 (seconds on a
           CPU; tests).

Sections:
  data_dir       the benchmark: a `launch.preprocess --out` folder (required).
  checkpoint     a training run's checkpoint directory (its latest step), one step
                 directory, or a params-only directory (`checkpoint.save_params`, e.g. a
                 converted HF model). Empty: model.hf_dir's safetensors (the base model).
  random_init    with neither: random weights (smoke tests only).
  tokenizer_dir  folder with tokenizer.json; empty: model.hf_dir's, else
                 <data_dir>/tokenizer.
  out_dir        results: per selector and frame order `<name>.{jsonl,json,md}`,
                 `comparison.{md,json}` when several ran, and `report.md`.
  workdir        a training workdir: its metrics.jsonl curves go into the report.
  model          configs/model.py's section: preset / hf_dir, match_tokenizer, dtype,
                 param_dtype, attention_impl (the rest only matter for training).
  tad            configs/tad.py's `tad` section: `k` is K for every selector, the rest
                 are TAD's settings (the selectors are eval.selectors).
  eval           how each evaluation runs (chronoforge_jax.evaluation.evaluator's
                 EvalSettings, which checks these fields):
    selectors        keyframe selectors, each evaluated in turn (uniform first, so the
                     comparison's last column is TAD's gain), names in `tad.SELECTORS`.
    mode             "generate" (greedy answer + scoring) or "likelihood" (argmax of each
                     option's answer_template log-prob).
    batch_size       questions per forward pass; a multiple of mesh data x fsdp.
    max_new_tokens   answer length cap (generate).
    answer_template  the completion scored per option letter (likelihood); match the
                     format the model was trained to answer in.
    prompt_template  "short" or "videor1" (chronoforge_jax/data/prompts.py); empty: the
                     training run's (eval_defaults.json in its workdir), else "short".
    scoring          "lenient" or "lmms_eval" (lmms-eval's VideoMME rule, comparable with
                     published numbers); empty: the training run's, else "lenient".
    patch_mode       "pair" (two keyframes per temporal patch, K even) or "duplicate".
    frame_orders     "ordered" (the benchmark) and the controls "shuffled" and "zeroed".
    frame_order_seed seed of the shuffled permutations.
    max_questions    evaluate only the first N questions (0: all).
    prompt_buckets   prompt lengths without video tokens (few compiles).
  mesh           data, fsdp, tensor axis sizes over all processes' devices (-1: the
                 rest); the batch is split over data x fsdp, the params over fsdp x
                 tensor.

Tuple fields are overridden as Python literals: --config.eval.selectors="('tad',)".
"""

from __future__ import annotations

import ml_collections

from chronoforge_jax import sharding
from configs import common
from configs import model as model_config
from configs import tad as tad_config

VARIANTS = ("default", "demo", "smoke")
# The path fields, made absolute at the launcher (`tools.absolute_config_paths`).
PATHS = ("data_dir", "checkpoint", "tokenizer_dir", "out_dir", "workdir", "model.hf_dir")
# The demo's answer format: its SFT targets leave <think> empty (configs/kf_grpo.py:demo).
DEMO_ANSWER_TEMPLATE = "<think></think><answer>{letter}</answer>"


def eval_section() -> ml_collections.ConfigDict:
  """The `eval` section's defaults (field meanings in the module docstring)."""
  c = ml_collections.ConfigDict()
  c.selectors = ("uniform", "tad")
  c.mode = "generate"
  c.batch_size = 8
  c.max_new_tokens = 512
  c.answer_template = "<answer>{letter}</answer>"
  c.prompt_template = ""  # "": the training run's, else "short".
  c.scoring = ""  # "": the training run's, else "lenient".
  c.patch_mode = "pair"
  c.frame_orders = ("ordered",)
  c.frame_order_seed = 0
  c.max_questions = 0  # 0: all.
  c.prompt_buckets = (128, 256, 512)
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`--config=configs/eval.py:VARIANT` (default, demo or smoke)."""
  args = common.parse_arg(arg, variant="default")
  common.check_choice(args.variant, "variant", set(VARIANTS))
  v = args.variant
  c = ml_collections.ConfigDict()
  c.data_dir = ""
  c.checkpoint = ""
  c.random_init = False
  c.tokenizer_dir = ""
  c.out_dir = "eval_out"
  c.workdir = ""
  c.model = model_config.get_config({"demo": "small"}.get(v, v))
  c.model.match_tokenizer = True  # A no-op for Qwen's tokenizer; the tiny one needs it.
  c.tad = tad_config.tad_section()
  del c.tad["selector"]  # Evaluation runs every selector in eval.selectors.
  c.eval = eval_section()
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  if v == "demo":
    # As configs/kf_grpo.py:demo trains and evaluates (configs/data.py:demo's input).
    c.tad.k = 8
    c.eval.patch_mode = "duplicate"
    c.eval.mode = "likelihood"
    c.eval.batch_size = 50
    c.eval.max_new_tokens = 32
    c.eval.answer_template = DEMO_ANSWER_TEMPLATE
    c.eval.prompt_buckets = (96, 128)
  elif v == "smoke":
    c.tad.k = 4
    c.tad.window = 4
    c.eval.mode = "likelihood"
    c.eval.batch_size = 2
    c.eval.max_new_tokens = 8
  validate(c)
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the model, tad and mesh sections and the eval section's shape.

  The eval fields' values are checked by `evaluator.EvalSettings` (their only checker),
  which `launch.eval` builds from this config before any model loads; the data and
  checkpoint folders are checked there too.

  Raises:
    common.ConfigError: naming the first bad field and what would fix it.
  """
  check = common.check
  model_config.validate(config.model)
  # configs/tad.py's checks, with a stand-in for the selector this section lacks.
  tad = ml_collections.ConfigDict({**config.tad.to_dict(), "selector": "tad"})
  tad_config.validate_tad(ml_collections.ConfigDict({"tad": tad}))
  for field in ("selectors", "frame_orders"):
    value = config.eval[field]
    check(
      isinstance(value, (tuple, list)) and len(value) > 0 and len(set(value)) == len(value),
      f"eval.{field}",
      f"got {value!r}; need one or more distinct names, e.g. --config.eval.{field}=\"('a',)\"",
    )
  common.build(sharding.MeshSettings.from_config, config.mesh)
