"""The memory plan equals what the initialised, sharded train state really occupies."""

import math

import jax
import jax.numpy as jnp
import pytest

from chronoforge_jax import sharding
from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.models import sampling
from chronoforge_jax.train import loop, planning
from chronoforge_jax.train import state as state_lib
from configs import kf_grpo


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  tok_dir = tmp_path_factory.mktemp("tok")
  tokenizer_lib.build_tiny_tokenizer(tok_dir)
  c = kf_grpo.get_config("smoke")
  c.input.tokenizer_dir = str(tok_dir)
  c.input.data_dir = str(tok_dir)
  c.rl.beta = 0.04
  return c


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 2), (1, 8, 1)])
def test_plan_matches_the_real_sharded_state(config, shape):
  mesh = sharding.make_mesh(shape, devices=jax.devices()[: math.prod(shape)])
  s = loop.setup(config, mesh)
  rows = {r.name: r for r in planning.plan(config, mesh, s.model_config, frame_size=56)}
  with jax.set_mesh(mesh):
    state = s.init_state()
  params = state["params"]
  assert rows["visual params"].elements + rows["text params"].elements == sum(
    x.size for x in jax.tree.leaves(params)
  )
  assert rows["visual params"].device_bytes + rows[
    "text params"
  ].device_bytes == planning.measured_device_bytes(params)
  assert rows["optimizer state"].device_bytes == planning.measured_device_bytes(state["opt_state"])
  assert rows["reference params (beta > 0)"].device_bytes == planning.measured_device_bytes(params)
  if shape != (1, 1, 1):  # Sharding actually splits the params.
    assert (
      planning.measured_device_bytes(params)
      < rows["visual params"].global_bytes + rows["text params"].global_bytes
    )


def test_rollout_cache_rows_count_prompt_once_and_each_answer(config):
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  model_cfg = state_lib.model_config(
    config, tokenizer_lib.Tokenizer.from_dir(config.input.tokenizer_dir)
  )
  shapes = planning.rollout_cache_shapes(config, model_cfg, 56)
  layers, b, prompt, kv, head_dim = shapes["prefix"]
  t = model_cfg.text
  video = (config.tad.k // 2) * (56 // 28) ** 2
  g = config.rl.num_generations
  assert (layers, kv, head_dim) == (
    t.num_hidden_layers,
    t.num_key_value_heads,
    t.hidden_size // t.num_attention_heads,
  )
  assert b == config.input.batch_size
  assert prompt == max(config.input.prompt_buckets) + video
  # The sampler's answer cache: every token after the first is written before the next.
  assert shapes["suffix"] == (layers, b * g, config.rl.max_new_tokens - 1, kv, head_dim)
  cache = {r.name: r for r in planning.plan(config, mesh, model_cfg, frame_size=56)}
  per_prompt = sampling.kv_cache_bytes(
    t, prompt_len=prompt, max_new_tokens=config.rl.max_new_tokens, num_samples=g, dtype=jnp.float32
  )
  assert (
    cache["rollout KV cache (K+V)"].global_bytes
    == b * per_prompt
    == 2 * layers * kv * head_dim * 4 * b * (prompt + g * (config.rl.max_new_tokens - 1))
  )  # float32 (smoke)
  # G copies of each prompt, as the sampler held them before the shared prefix.
  copies = sampling.kv_cache_bytes(
    t,
    prompt_len=prompt,
    max_new_tokens=config.rl.max_new_tokens,
    num_samples=g,
    dtype=jnp.float32,
    shared_prefix=False,
  )
  assert copies == 2 * layers * kv * head_dim * 4 * g * (prompt + config.rl.max_new_tokens - 1)
  assert per_prompt < copies


# ----------------------------------------------------------------------------------------
# TPU slices and the compiled plan (launch.plan --topology --compile).
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name,chips,topology",
  [
    # Cloud TPU's slice shapes (cloud.google.com/tpu/docs/v5p, v5e, v6e, v4).
    ("v5p-8", 4, "v5:2x2x1"),
    ("v5p-16", 8, "v5:2x2x2"),
    ("v5p-32", 16, "v5:2x2x4"),
    ("v5p-64", 32, "v5:2x4x4"),
    ("v5p-128", 64, "v5:4x4x4"),
    ("v5p-256", 128, "v5:4x4x8"),
    ("v4-32", 16, "v4:2x2x4"),
    ("v5e-1", 1, "v5e:1x1"),
    ("v5e-8", 8, "v5e:2x4"),
    ("v5e-16", 16, "v5e:4x4"),
    ("v5e-256", 256, "v5e:16x16"),
    ("v6e-64", 64, "v6e:8x8"),
  ],
)
def test_slice_names_map_to_chips_and_libtpu_topologies(name, chips, topology):
  topo = planning.parse_topology(name)
  assert (topo.chips, topo.topology_name) == (chips, topology)


def test_hbm_per_chip_and_override():
  assert {
    g: planning.parse_topology(f"{g}-8").hbm_bytes / 2**30 for g in ("v5p", "v5e", "v6e", "v4")
  } == {"v5p": 95, "v5e": 16, "v6e": 32, "v4": 32}
  assert planning.parse_topology("v5p-8", hbm_gib=0.5).hbm_bytes == 2**29


@pytest.mark.parametrize("bad", ["v5p-12", "v5p-3", "tpu-8", "v5p16", "v7-8"])
def test_bad_slice_names_say_how_to_spell_them(bad):
  with pytest.raises(ValueError, match=r"--topology=.*(v5p-16|power of two)"):
    planning.parse_topology(bad)


def _report(name, peak_gib, **kw):
  return planning.ProgramReport(name, 1, peak_bytes=int(peak_gib * 2**30), **kw)


def test_fit_line_names_the_largest_peak_and_the_program_that_does_not_fit():
  topo = planning.parse_topology("v5e-16")
  line, ok = planning.fit_line([_report("views", 3.0), _report("grpo_step", 12.5)], topo)
  assert (line, ok) == ("fits: peak 12.50 GiB of 16 GiB per chip on v5e-16", True)
  line, ok = planning.fit_line(
    [_report("views", 3.0), _report("grpo_step", 17.25), _report("sample[ordered]", 16.5)], topo
  )
  assert (line, ok) == (
    "does not fit: peak 17.25 GiB of 16 GiB per chip on v5e-16 (program grpo_step)",
    False,
  )
  # A program the compiler rejected: the HBM it asked for, read from its message.
  message = (
    "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for "
    "HLO temporaries (36.00G) exceeds available HBM (15.75G)."
  )
  oom = planning.ProgramReport(
    "grpo_step", 1, error=message, required_bytes=planning._required_bytes(message)
  )
  line, ok = planning.fit_line([_report("views", 3.0), oom], topo)
  assert (line, ok) == (
    "does not fit: peak 36.00 GiB of 16 GiB per chip on v5e-16 (program grpo_step)",
    False,
  )
  # The other message form XLA uses.
  assert planning._required_bytes(
    "Ran out of memory in memory space hbm. Used 20.50G of 15.75G hbm."
  ) == int(20.5 * 2**30)


@pytest.mark.slow
def test_tpu_compile_of_the_grpo_step_holds_exactly_the_planned_state(config):
  """Compiles the tiny config's GRPO step for a v5e-4 slice (libtpu, no TPU): the memory
  analysis exists, and XLA's argument bytes are the plan's params + optimizer state +
  reference, the step counter and the batch/rollout inputs, each padded to its TPU tiles."""
  pytest.importorskip("libtpu")
  config = config.copy_and_resolve_references()
  config.mesh.update(dict(data=1, fsdp=4, tensor=1))
  topo = planning.parse_topology("v5e-4")
  mesh = planning.topology_mesh(topo, config.mesh)
  assert {d.platform for d in mesh.devices.flat} == {"tpu"}
  model_cfg = state_lib.model_config(
    config, tokenizer_lib.Tokenizer.from_dir(config.input.tokenizer_dir)
  )
  out = {}
  (report,) = planning.compile_programs(
    config, mesh, model_cfg, frame_size=56, only=["grpo_step"], compiled_out=out
  )
  args, compiled = out["grpo_step"]
  mem = compiled.memory_analysis()
  assert report.fits and report.argument_bytes == mem.argument_size_in_bytes > 0
  assert report.temp_bytes > 0 and report.code_bytes > 0 and report.flops > 0
  assert report.peak_bytes >= report.argument_bytes
  # 1. XLA's argument bytes = every argument's shard, padded to its compiled tiles.
  formats = jax.tree.leaves(compiled.input_formats[0], is_leaf=lambda x: hasattr(x, "layout"))
  leaves = jax.tree.leaves(args)
  assert len(formats) == len(leaves)
  assert report.argument_bytes == sum(planning.layout_bytes(a, f) for a, f in zip(leaves, formats))
  # 2. The state part, unpadded under the compiled program's own input shardings, is the
  #    abstract plan's params + optimizer state + reference (+ the int32 step counter).
  state_shardings = jax.tree.leaves(compiled.input_shardings[0][0])
  state_leaves = jax.tree.leaves(args[0])
  compiled_state = sum(
    math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
    for a, s in zip(state_leaves, state_shardings)
  )
  rows = {r.name: r for r in planning.plan(config, mesh, model_cfg, frame_size=56)}
  planned = sum(
    rows[k].device_bytes
    for k in ("visual params", "text params", "optimizer state", "reference params (beta > 0)")
  )
  assert compiled_state == planned + 4
  # Sharding really splits the state: fsdp=4 holds less than one replica per chip.
  assert rows["text params"].device_bytes < rows["text params"].global_bytes


def test_decoder_flops_count_the_models_own_matmul_weights():
  from flax import nnx

  from chronoforge_jax.models import config as model_config
  from chronoforge_jax.models import text

  # Qwen2.5-7B: 7.61B parameters, of which the 0.545B embedding is a gather and about
  # 0.1M are biases and norms: 7,070,285,824 matmul weights (layers + LM head).
  seven_b = model_config.get_preset("qwen2_5_vl_7b").text
  per_layer = 2 * 3584 * 3584 + 2 * 3584 * 512 + 3 * 3584 * 18944
  assert planning.decoder_matmul_params(seven_b) == 28 * per_layer + 3584 * 152064
  assert planning.decoder_matmul_params(seven_b) == 7_070_285_824
  # The tiny preset's decoder, counted from its own params: every kernel and the LM head.
  cfg = model_config.get_preset("tiny").text
  model = nnx.eval_shape(lambda: text.TextDecoder(cfg, rngs=nnx.Rngs(0)))
  kernels = sum(
    math.prod(v.shape)
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    if path[-1] in ("kernel", "lm_head")
  )
  assert planning.decoder_matmul_params(cfg) == kernels
  # Forward + backward = 3 x (2 FLOPs per weight + Q K^T and A V over S keys per head).
  s = 100
  attention = 3 * cfg.num_hidden_layers * 2 * (2 * s * cfg.num_attention_heads * cfg.head_dim)
  assert planning.decoder_train_flops_per_token(cfg, s) == 6 * kernels + attention
  assert planning.decoder_train_flops_per_token(cfg, s, causal=True) == 6 * kernels + attention / 2


def test_reports_without_a_time_estimate_show_none():
  topo = planning.parse_topology("v6e-32")
  gib = planning.GIB
  timed = planning.ProgramReport("views", 1, peak_bytes=gib, flops=918e12 * 0.5, seconds=2.0)
  untimed = planning.ProgramReport("grpo_step", 1, peak_bytes=2 * gib, flops=1e12)
  rows = planning.format_reports([timed], topo).splitlines()
  assert rows[2].split()[-3:] == ["2000.0", "25.0%", "0.0s"]
  assert rows[3].split()[-2:] == ["2000.0", "25.0%"]
  rows = planning.format_reports([timed, untimed], topo).splitlines()
  assert rows[3].split()[-3:] == ["-", "-", "0.0s"]
  assert rows[4].split()[-2:] == ["-", "-"]  # The step has no estimate either.
