"""Training: state and optimizer (`state`), the pure jitted steps (`steps`), the loop
(`loop`), checkpoints (`checkpoint`), metrics and timers (`metrics`) and memory/compile
planning for a slice (`planning`).

Submodules are imported explicitly (`from chronoforge_jax.train import loop`) so that
importing the package stays cheap.
"""
