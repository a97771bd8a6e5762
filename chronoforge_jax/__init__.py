"""chronoforge-jax: ChronoForge-RL (TAD keyframes + KF-GRPO) for video-language models.

See DESIGN.md-level overview in the README. Submodules are imported explicitly
(`from chronoforge_jax import tad`) so that importing the package stays cheap.
"""

__version__ = "0.1.0"
