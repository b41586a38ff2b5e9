"""`lpmace bench`: speed, memory, accuracy against fp64, equivariance and NVE stability of one model
under every precision and backend, side by side with mace-torch running the same weights.

Sections (each a module, each returning JSON-ready rows that `report` renders):
    choices.py            the section names and model sizes (no torch: `lpmace --help` lists them)
    workloads.py          the random models, W1/W2/W3 graphs (shared/ANCHORS.md) and the mace-torch twin
    measure.py            CUDA-synchronised timing (median and spread), peak memory, the environment
    speed.py              training-step and inference speed; scaling against system size (OOM reported)
    roofline.py           achieved FLOP/s and bytes/s against a table of known device peaks
    accuracy.py           error against an fp64 evaluation of the same weights; equivariance error
    stability.py          NVE energy drift per precision and MD engine (ASE's, torch), blow-ups reported
    time_to_accuracy.py   W3: test force RMSE against training wall time per precision (+ mace_run_train)
  the experiments (only when named in --workloads; each trains or builds its own models; what they
  showed: docs/experiments/):
    quantize.py           int8/fp8 readouts: change against the unquantized model, bytes, speed
    species_rank.py       low-rank element weights: storage against elements and rank; accuracy against rank
    progressive_correlation.py  correlation order raised by epoch against a fixed one (time to accuracy)
    precision_schedule.py fixed fp32, bf16-mixed, layerwise against bf16-mixed then fp32 (time to accuracy)
    report.py             report.md, self-contained report.html, PNG plots
    runner.py             the matrix, the progress bar, results.json

results.json (schema 1); every number is a float, int, or null where it was not measured, and every
row names what produced it: ``code`` ("lpmace" or "mace-torch"), ``backend`` (lpmace: "reference",
...; mace-torch: "e3nn" or "cueq") and ``precision`` (an lpmace preset, or "fp32"/"fp64" for
mace-torch):

    schema: 1
    environment: {device, device_name, driver, cuda, torch, triton, e3nn, mace_torch, python, platform,
                  lpmace, git_commit, date (ISO 8601 UTC), command}
    settings: {model (description), model_config (dict), parameters, precisions, backends, workloads,
               quick, repeats, warmup, seed}
    speed: [{workload ("train W1" | "infer W2" | ...), code, backend, precision, atoms, edges, repeats,
             median_ms, iqr_ms, min_ms, max_ms, back_to_back_ms (train rows; null for infer),
             atom_steps_per_s, peak_memory_mb, status ("ok" | "OOM" |
             "error: ..."), }]
    scaling: [{code, backend, precision, atoms, edges, median_ms, atom_steps_per_s, peak_memory_mb, status}]
    accuracy: [{dataset, configs, atoms, code, backend, precision, energy_rmse_mev_per_atom,
                energy_max_mev_per_atom, force_rmse_mev_per_A, force_max_mev_per_A, force_rel_rmse,
                stress_rmse_mev_per_A3 (null without a periodic cell)}]   # all against fp64, same weights
    equivariance: [{code, backend, precision, rotations, force_rel_rmse_rotation, force_rel_rmse_reflection,
                    energy_rel_rotation}]
    md: [{system, atoms, engine ("ase" | "torch"), code, backend, precision, steps, steps_done, dt_fs,
          temperature_K, drift_mev_per_atom_per_ps, fluctuation_mev_per_atom, drift_vs_fp64 (against the
          same system and engine), stable, unstable_step, reason, ms_per_step, model_ms_per_step (null
          for ase), neighbour_list_builds, trace: {time_fs: [...], total_mev_per_atom: [...]}}]
          # one row per system x engine x precision (a run of one system); before the torch engine the
          # rows had no engine (they were ase's) and wall_s_per_step (s) instead of ms_per_step
    time_to_accuracy: {target_mev_per_A, budget_s, runs: [{code, backend, precision, metric
                       ("test force RMSE" | "valid force RMSE"), curve: [{time_s, epoch, force_rmse_mev_per_A}],
                       time_to_target_s, final_force_rmse_mev_per_A, status}]}
    roofline: [{workload, code, backend, precision, flop, bytes, median_ms, achieved_tflop_per_s,
                achieved_tb_per_s, peak_tflop_per_s, peak_tb_per_s, fraction_of_peak_flop,
                fraction_of_peak_bandwidth}]
    quantize, species_rank, progressive_correlation, precision_schedule: {settings: {...}, rows: [...],
                  seconds}    # the experiments' rows, as their modules document them
    skipped: [{section, what, why}]    # what was not measured, and why (never silently absent)
"""
