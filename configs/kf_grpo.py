r"""KF-GRPO training (with optional SFT warm-up) of a Qwen2.5-VL-architecture VLM.

Variants:
  smoke          tiny model, synthetic set, a few steps: seconds on a CPU (tests, CI).
  demo           the small preset on the learnable synthetic colour-order set (2000
                 questions, K = 8 TAD keyframes, one per temporal patch): SFT warm-up to
                 well above chance, then KF-GRPO: `make demo`, and the base of
                 configs/ablation.py.
  demo_rl        the demo's KF-GRPO phase as a run of its own, started from an SFT
                 checkpoint (set ckpt.init_from): 4 prompts per step, G = 8 per view,
                 a small learning rate and the KL anchor; `make demo` and every arm of
                 configs/ablation.py use it.
  qwen2_5_vl_7b  the paper's setup: Qwen2.5-VL-7B from converted HF weights, 16 TAD
                 keyframes, G = 8 per view, beta = 0.04, lr 1e-6 (Video-R1's recipe where
                 the paper is silent; see configs/rl.py and ../shared/PAPER.md).

  Slice variants: the paper's setup (or the 72B model) with the batch, mesh, remat policy
  and attention chosen for one Cloud TPU slice by compiling it for that slice with scanned
  layers (README "Will it fit?"; no TPU needed). Reproduce a verdict with
    python -m launch.plan --config=configs/kf_grpo.py:VARIANT --topology=SLICE --compile
  qwen2_5_vl_7b_v5p16   v5p-16 (8 chips, 95 GiB): batch 8, fsdp 8, full remat, chunked
                        attention. Compiled (every program, sft_step too with
                        --config.sft_steps=1): peak 37.49 GiB per chip (grpo_step).
  qwen2_5_vl_7b_v6e32   v6e-32 (32 chips, 32 GiB, a 4x8 torus): batch 8, fsdp 8 x tensor
                        4, full remat, splash attention. Compiled (every program): peak
                        15.41 GiB per chip (grpo_step; 15.69 GiB with chunked attention).
                        fsdp 16 on v6e-16 needed 36 GiB (unrolled compile); each mesh
                        axis must be a product of torus sides: 16 x 2 is not.
  qwen2_5_vl_72b_v5p64  Qwen2.5-VL-72B on v5p-64 (32 chips, 95 GiB): batch 32, fsdp 32,
                        full remat, chunked attention. Compiled (every program): peak
                        92.95 GiB per chip (grpo_step; 91.56 GiB with splash): little
                        headroom. On v5p-32 params, optimizer state and reference
                        alone take 68.4 GiB per chip (abstract plan; not compiled).
  All keep 16 keyframes at 448 px (2048 video tokens), G = G' = 8, prompts up to 512 text
  tokens and answers up to 768 tokens: one prompt (8 + 8 rollouts) per fsdp shard.

Launch commands:
  # CPU smoke run on preprocessed synthetic shards:
  python -m launch.train --config=configs/kf_grpo.py:smoke --workdir=/tmp/kf_smoke \
      --config.input.data_dir=out/synthetic/train
  # The paper's setup on a TPU pod / multi-GPU host (one process per host):
  python -m launch.convert_hf --hf_dir=/data/Qwen2.5-VL-7B-Instruct --out=/ckpt/qwen7b
  python -m launch.train --config=configs/kf_grpo.py:qwen2_5_vl_7b --workdir=gs://b/run \
      --config.input.data_dir=/data/videor1_shards \
      --config.input.tokenizer_dir=/data/Qwen2.5-VL-7B-Instruct \
      --config.model.hf_dir=/data/Qwen2.5-VL-7B-Instruct --config.ckpt.init_from=/ckpt/qwen7b
"""

from __future__ import annotations

import ml_collections

from chronoforge_jax import sharding
from chronoforge_jax.train import state
from configs import ckpt as ckpt_config
from configs import common
from configs import data as data_config
from configs import model as model_config
from configs import rl as rl_config
from configs import tad as tad_config

# Slice variants: (model preset, global batch, fsdp, tensor, remat, attention).
SLICES = {
  "qwen2_5_vl_7b_v5p16": ("qwen2_5_vl_7b", 8, 8, 1, "full", "chunked"),
  "qwen2_5_vl_7b_v6e32": ("qwen2_5_vl_7b", 8, 8, 4, "full", "splash"),
  "qwen2_5_vl_72b_v5p64": ("qwen2_5_vl_72b", 32, 32, 1, "full", "chunked"),
}
VARIANTS = ("smoke", "demo", "demo_rl", "qwen2_5_vl_7b") + tuple(SLICES)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`--config=configs/kf_grpo.py:VARIANT`."""
  args = common.parse_arg(arg, variant="smoke")
  common.check_choice(args.variant, "variant", set(VARIANTS))
  v = args.variant
  data_variant = {"smoke": "smoke", "demo": "demo", "demo_rl": "demo"}.get(v, "default")
  rl_variant = {"smoke": "smoke", "demo": "demo", "demo_rl": "demo"}.get(v, "default")

  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000  # Optimizer steps, SFT warm-up included.
  c.sft_steps = 0  # Steps < sft_steps are cross-entropy on reference answers.
  c.log_every = 10  # Console progress line interval (steps).
  c.max_bad_steps = 5  # Consecutive non-finite steps before the run halts.

  data = data_config.get_config(data_variant)
  c.input = data.input
  c.tad = data.tad

  c.model = model_config.get_config(
    {"smoke": "smoke", "demo": "small", "demo_rl": "small"}.get(v, "default")
  )

  c.rl = rl_config.rl_config(rl_variant)

  c.optax = ml_collections.ConfigDict()
  c.optax.learning_rate = 1e-6  # KF-GRPO steps (Video-R1: 1e-6).
  c.optax.sft_learning_rate = 1e-6  # SFT warm-up steps.
  c.optax.warmup_steps = 10  # Per phase: the schedule restarts when KF-GRPO begins.
  c.optax.end_lr_fraction = 0.1  # Cosine decays to this fraction of each phase's peak.
  c.optax.b1 = 0.9
  c.optax.b2 = 0.999
  c.optax.weight_decay = 0.01
  c.optax.grad_clip = 1.0  # Global norm; 0 disables clipping.
  c.optax.freeze_vision = False  # True: the vision tower gets no updates.
  c.optax.grad_accum = 1  # Micro-batches per optimizer update.

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.ckpt = ckpt_config.get_config(v if v in ("smoke",) else "default")

  if v == "smoke":
    c.optax.sft_learning_rate = 1e-2
    c.optax.learning_rate = 2e-3
    c.optax.warmup_steps = 2
    c.rl.num_generations = 8  # Larger groups: a steadier signal for the tiny model.
    c.optax.weight_decay = 0.0
    c.rl.beta = 0.0
    c.total_steps = 4
    c.sft_steps = 2
    c.log_every = 1
  elif v in ("demo", "demo_rl"):
    # SFT on short targets (<think></think><answer>L</answer>: input.target_reasoning is
    # off) teaches the format and to read the flashes; KF-GRPO then runs at a small
    # learning rate with the KL anchor (a large RL step collapses a small policy).
    # 300 SFT steps reached 84%, 90% and 52% held-out over seeds 0-2; 450 are needed.
    c.total_steps = 470
    c.sft_steps = 450
    c.log_every = 25
    c.optax.sft_learning_rate = 1e-3
    c.optax.learning_rate = 1e-4  # 1e-3 collapsed the format within 40 steps.
    c.optax.warmup_steps = 20
    c.optax.weight_decay = 0.0
    c.rl.num_generations = 8
    c.rl.num_disordered = 8
    c.rl.max_new_tokens = 16  # The answer turn is 14 tokens with the tiny tokenizer.
    c.ckpt.save_every = 100
    if v == "demo_rl":
      # A KF-GRPO step costs G + G' rollouts and a G-row training pass per prompt, so
      # far fewer prompts per step than SFT; the run starts from ckpt.init_from.
      c.input.batch_size = 4
      c.total_steps = 40
      c.sft_steps = 0
      c.log_every = 5
      c.optax.warmup_steps = 5
      c.ckpt.save_every = 20
  elif v == "qwen2_5_vl_7b" or v in SLICES:
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.total_steps = 2000
    c.rl.mc_rule = "videor1"  # Video-R1's exact-letter reward (README: Video-R1 types).
    c.input.prompt_template = "videor1"  # Video-R1's QUESTION_TEMPLATE + TYPE_TEMPLATE.
    c.input.eval_scoring = "lmms_eval"  # Published VideoMME numbers read answers so.
    if v in SLICES:
      preset, batch, fsdp, tensor, remat, attention = SLICES[v]
      c.model.preset = preset
      c.input.batch_size = batch
      c.mesh.fsdp = fsdp
      c.mesh.tensor = tensor
      c.model.remat_policy = remat
      c.model.attention_impl = attention
  return c


def validate(config: ml_collections.ConfigDict, *, require_data_dir: bool = True) -> None:
  """Checks every section before anything is compiled (raises common.ConfigError).

  The sections are checked by the library's settings types (configs/data.py,
  configs/tad.py, configs/model.py, configs/ckpt.py build them); configs/rl.py checks
  `rl`. `require_data_dir=False` allows an empty input.data_dir (launch.plan reads no
  data).
  """
  check = common.check
  for f in ("log_every", "max_bad_steps"):
    check(isinstance(config[f], int) and config[f] >= 1, f, f"got {config[f]!r}; need >= 1")
  model_config.validate(config.model)
  # With `tad` and `model`: K, the selector and the vision patch sizes.
  data_config.validate_data(config)
  # configs/tad.py's own `input` section means decoding; here `input` is the pipeline.
  tad_config.validate_tad(ml_collections.ConfigDict({"tad": config.tad}))
  rl_config.validate_rl(config)
  ckpt_config.validate_ckpt(config.ckpt)
  if require_data_dir:
    check(
      bool(config.input.data_dir),
      "input.data_dir",
      "empty; point it at a folder written by `python -m launch.preprocess`",
    )
  common.build(state.OptimizerSettings.from_config, config)
  common.build(sharding.MeshSettings.from_config, config.mesh)
