"""ml_collections configs: each module has `get_config(arg)` with a `smoke` variant."""
