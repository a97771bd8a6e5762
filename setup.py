"""chronoforge-jax: ChronoForge-RL (TAD + KF-GRPO) for video-language models in JAX/Flax."""

import setuptools

_CORE = [
  "jax>=0.7",
  "flax>=0.11",
  "optax>=0.2.4",
  "orbax-checkpoint>=0.11",
  "grain>=0.2.12",
  "array-record>=0.7",
  "einops>=0.8",
  "ml-collections>=1.0",
  "absl-py>=2.1",
  "numpy>=1.26",
  "matplotlib>=3.8",
  "tensorboardX>=2.6",
  "tqdm>=4.66",
  "rouge-score>=0.1.2",  # Video-R1's free-form reward (ROUGE).
]
# The jax release the project is tested with, and the accelerator plugins built for it (the
# pins `jax[tpu]==0.10.2` and `jax[cuda12]==0.10.2` resolve to). A bare `pip install -U
# "jax[tpu]"` would move jax past the tested version; these extras never do.
_JAX_TESTED = ["jax==0.10.2", "jaxlib==0.10.2"]
# libtpu also lets a CPU-only machine compile for TPU topologies (`launch.plan --compile`,
# tests/planning_test.py), so the test extra carries it too.
_LIBTPU = ["libtpu==0.0.42.*"]
_TPU = _JAX_TESTED + _LIBTPU + ["requests"]  # requests: jax's TPU VM metadata queries.
_CUDA12 = _JAX_TESTED + ["jax-cuda12-plugin[with-cuda]==0.10.2"]
_VIDEO = ["av>=12"]
_HF = ["safetensors>=0.4", "tokenizers>=0.20"]
# The PyTorch reference stack for parity tests. torch is pinned: this exact CPU build is
# available locally, an unpinned `torch` pulls a multi-GB CUDA build.
_TEST = [
  "pytest>=8",
  "pytest-xdist>=3.5",
  "hypothesis>=6.100",
  "torch==2.13.0",
  "transformers>=4.50",
  "scenedetect>=0.6.4",
  "opencv-python-headless>=4.9",
  "pyarrow>=15",  # VideoMME's official annotations are a parquet file.
  "ruff==0.17.*",  # `make lint`: one minor release, so formatting does not drift.
]

setuptools.setup(
  name="chronoforge-jax",
  version="0.1.0",
  description="ChronoForge-RL (TAD keyframes + KF-GRPO) for video-language models in JAX/Flax",
  long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
  long_description_content_type="text/markdown",
  python_requires=">=3.11",
  packages=setuptools.find_packages(include=["chronoforge_jax", "chronoforge_jax.*"]),
  install_requires=_CORE,
  extras_require={
    "video": _VIDEO,
    "hf": _HF,
    "tpu": _TPU,
    "cuda12": _CUDA12,
    "test": _TEST + _VIDEO + _HF + _JAX_TESTED + _LIBTPU,
    "all": _TEST + _VIDEO + _HF + _JAX_TESTED + _LIBTPU,
  },
)
