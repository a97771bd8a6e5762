"""Evaluation: the benchmark loop (`evaluator`), results and tables (`results`), the
training report (`report`, `plots`) and the paper's ablation in miniature (`ablation`).

Submodules are imported explicitly (`from chronoforge_jax.evaluation import evaluator`)
so that importing the package stays cheap.
"""
