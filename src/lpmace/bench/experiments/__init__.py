"""Bench experiments: one module per experiment (NAME, run(*, device, quick, progress, seed) -> dict)."""
