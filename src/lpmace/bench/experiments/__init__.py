"""Experiments of `lpmace bench --experiment NAME`: one module each, exposing NAME and run()."""
