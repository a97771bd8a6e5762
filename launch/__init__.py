"""Command-line entry points: thin absl launchers that call into chronoforge_jax."""
