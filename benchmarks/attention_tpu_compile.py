r"""XLA's memory for "splash" vs "xla" attention, compiled for a TPU topology without a TPU.

  python -m venv .venv_tpu && .venv_tpu/bin/pip install -e . 'libtpu==0.0.42.1'
  .venv_tpu/bin/python benchmarks/attention_tpu_compile.py                # v5p:2x2x1
  .venv_tpu/bin/python benchmarks/attention_tpu_compile.py --topology v5e:2x2 \
      --batch_per_chip 2 --seq 8192

libtpu (the version `pip install --dry-run 'jax[tpu]==<jax version>'` pins: 0.0.42.1 for
jax 0.10.2) lets a CPU-only host compile for a real TPU topology
(`jax.experimental.topologies.get_topology_desc`): nothing is allocated and no TPU is
needed. Keep it out of the CPU development environment (it makes every jax start probe for
a TPU); a second venv is enough.

Two programs per implementation, both forward + backward, at the shapes of the config
(default: configs/kf_grpo.py:qwen2_5_vl_7b, the paper's setup), sharded on its mesh over
the topology's chips:
  attention   `layers.attention` alone: gradients for q, k, v of the decoder's causal +
              padding attention (28 query heads, 4 K/V heads, head_dim 128 for the 7B).
  layer       one decoder layer (norm, q/k/v/o projections, M-RoPE-rotated attention, MLP)
              under the config's remat policy: gradients for its params and its input.
The sequence is the config's rollout length (longest prompt bucket + video tokens of the
K keyframes at --frame_size + max_new_tokens), the batch `--batch_per_chip` rows per chip.
Printed per program: the per-chip bytes of `compiled.memory_analysis()` (arguments,
outputs, temporaries, code) and the compile time, then the temp ratio xla / splash.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Run from a checkout without installing: the package sits next to benchmarks/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse():
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--topology",
    default="v5p:2x2x1",
    help="TPU topology as jax spells it, e.g. v5p:2x2x1, v5e:2x2, v6e:2x2",
  )
  p.add_argument(
    "--config",
    default="qwen2_5_vl_7b",
    help="variant of configs/kf_grpo.py: model, mesh, lengths, remat, dtype",
  )
  p.add_argument("--frame_size", type=int, default=448, help="frame side, pixels")
  p.add_argument(
    "--seq", type=int, default=0, help="tokens per row (default: the config's rollout length)"
  )
  p.add_argument("--batch_per_chip", type=int, default=1, help="rows per chip")
  p.add_argument(
    "--impls", nargs="+", default=["xla", "splash"], help="attention implementations to compile"
  )
  p.add_argument(
    "--programs",
    nargs="+",
    default=["attention", "layer"],
    choices=["attention", "layer"],
    help="programs to compile",
  )
  return p.parse_args()


def _gib(n: int) -> str:
  return f"{n / 2**30:8.3f}"


def main():
  a = _parse()
  from flax import nnx
  import jax
  from jax.experimental import topologies
  import jax.numpy as jnp
  from jax.sharding import NamedSharding

  from chronoforge_jax import models, sharding
  from chronoforge_jax.models import layers, text
  from chronoforge_jax.models.vision import remat_policy_fn
  from chronoforge_jax.train import planning
  from configs import kf_grpo

  try:
    topo = topologies.get_topology_desc(topology_name=a.topology, platform="tpu")
  except Exception as e:
    sys.exit(
      f"cannot describe TPU topology {a.topology!r} ({type(e).__name__}: {e}).\n"
      "This needs libtpu in the running Python: see this script's docstring."
    )
  config = kf_grpo.get_config(a.config)
  model_cfg = models.config_from_section(config.model)
  cfg = model_cfg.text
  seq = a.seq or (planning.rollout_prompt_length(config, a.frame_size) + config.rl.max_new_tokens)
  mesh = sharding.make_mesh([int(config.mesh[x]) for x in sharding.MESH_AXES], devices=topo.devices)
  b = a.batch_per_chip * mesh.size
  h, g, hd, d = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size)
  dtype, param_dtype = jnp.dtype(config.model.dtype), jnp.dtype(config.model.param_dtype)
  print(
    f"{a.topology}: {mesh.size} x {topo.devices[0].device_kind}, mesh "
    f"{dict(zip(mesh.axis_names, mesh.axis_sizes))}; {a.config}: B={b} "
    f"({a.batch_per_chip}/chip) S={seq} H={h} G={g} hd={hd} D={d} {dtype.name}, "
    f"remat={config.model.remat_policy}"
  )

  def act(shape, axes, dt=dtype):
    spec = sharding.logical_to_spec(axes, shape=shape, mesh=mesh)
    return jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(mesh, spec))

  valid = act((b, seq), ("batch", "act_seq"), jnp.bool_)

  def attention_program(impl):
    def loss(q, k, v, cot, valid_bs):
      o = layers.attention(q, k, v, layers.CausalMask(valid_bs), impl=impl)
      return jnp.sum(o.astype(jnp.float32) * cot.astype(jnp.float32))

    q = act((b, seq, h, hd), ("batch", "act_seq", "act_heads", None))
    kv = act((b, seq, g, hd), ("batch", "act_seq", "act_kv_heads", None))
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2))), (q, kv, kv, q, valid)

  def layer_program(impl):
    abstract = nnx.eval_shape(
      lambda: text.DecoderLayer(
        cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype, attention_impl=impl
      )
    )
    graphdef, state = nnx.split(abstract)
    shardings = sharding.state_shardings(state, mesh)
    state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )
    policy = remat_policy_fn(config.model.remat_policy)

    def loss(state, x, cos, sin, valid_bs):
      def fwd(state, x):
        return nnx.merge(graphdef, state)(x, cos, sin, layers.CausalMask(valid_bs))[0]

      if policy is not None:
        fwd = jax.checkpoint(fwd, policy=policy)
      return jnp.sum(fwd(state, x).astype(jnp.float32) ** 2)

    x = act((b, seq, d), ("batch", "act_seq", "act_embed"))
    cs = act((b, seq, hd), ("batch", "act_seq", None))
    return jax.jit(jax.grad(loss, argnums=(0, 1))), (state, x, cs, cs, valid)

  builders = {"attention": attention_program, "layer": layer_program}
  print(
    f"{'program':<10} {'impl':<7} {'args GiB':>9} {'out GiB':>8} {'temp GiB':>9} "
    f"{'code MiB':>9} {'compile s':>9}"
  )
  temps = {}
  for prog in a.programs:
    for impl in a.impls:
      fn, args = builders[prog](impl)
      start = time.perf_counter()
      with jax.set_mesh(mesh):
        compiled = fn.lower(*args).compile()
      secs = time.perf_counter() - start
      m = compiled.memory_analysis()
      temps[prog, impl] = m.temp_size_in_bytes
      print(
        f"{prog:<10} {impl:<7} {_gib(m.argument_size_in_bytes):>9} "
        f"{_gib(m.output_size_in_bytes):>8} {_gib(m.temp_size_in_bytes):>9} "
        f"{m.generated_code_size_in_bytes / 2**20:9.2f} {secs:9.1f}",
        flush=True,
      )
  for prog in a.programs:
    if (prog, "xla") in temps and (prog, "splash") in temps:
      x, s = temps[prog, "xla"], temps[prog, "splash"]
      print(
        f"{prog}: temp xla / splash = {x / max(s, 1):.1f}x "
        f"({_gib(x).strip()} GiB -> {_gib(s).strip()} GiB per chip)"
      )


if __name__ == "__main__":
  main()
