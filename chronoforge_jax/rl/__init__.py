"""KF-GRPO reinforcement learning: rewards, GRPO losses and the two views of a video.

Submodules are imported explicitly (`from chronoforge_jax.rl import grpo`) so that
importing the package stays cheap.
"""
