"""Outputs of `lpmace md`: trajectory and CSV written as the run goes, and a clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

__all__ = ["BATCHED_CSV_HEADER", "CSV_HEADER", "Outputs", "StopOnSignal"]

CSV_HEADER = ("step", "time_fs", "potential_eV", "kinetic_eV", "total_eV", "temperature_K")
# --all-frames: one CSV for every system, a row per (system, sample); frames carry info["system"].
BATCHED_CSV_HEADER = ("system", *CSV_HEADER)


class StopOnSignal:
    """While active, SIGINT and SIGTERM ask the MD loop to stop after its current step instead of
    killing the process mid-write; the first signal restores the previous handlers, so a second one
    acts as usual (KeyboardInterrupt, termination). Off the main thread Python cannot install
    handlers, and signals keep their usual effect."""

    def __enter__(self):
        import signal
        import threading

        self.signal_number = 0
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signal_number, frame) -> None:
        self.signal_number = signal_number
        self._restore()

    def _restore(self) -> None:
        import signal

        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def requested(self) -> bool:
        return self.signal_number != 0

    @property
    def name(self) -> str:
        import signal

        return signal.Signals(self.signal_number).name

    def __exit__(self, exc_type, exc, tb) -> None:
        self._restore()


class Outputs:
    """Trajectory and CSV at their final paths, created at the first sample and appended and flushed
    at every one, so each holds, readable, every sample so far whenever the process ends. A frame
    is formatted in memory and written with one call, so a kill between samples cannot tear it.
    (Flushed to the OS, not fsync'ed: that survives any end of the process, which is what matters
    here; fsync per sample would cost disk latency for the power-cut case only.)

    `batched`: rows and frames of several systems, told apart by a first CSV column ``system`` and
    ``system=`` in each frame's comment line."""

    def __init__(self, out_path, log_path, dt_fs: float, batched: bool = False) -> None:
        self.paths = (out_path, log_path)
        self._dt_fs = dt_fs
        self._batched = batched
        self._files = []

    def _open(self) -> None:
        import os

        try:
            for path in self.paths:
                self._files.append(open(path, "w"))
        except OSError:
            for handle in self._files:  # none half-made: remove what this run created
                handle.close()
                os.unlink(handle.name)
            self._files = []
            raise
        self._files[1].write(",".join(BATCHED_CSV_HEADER if self._batched else CSV_HEADER) + "\n")
        self._files[1].flush()

    def write(self, step: int, atoms, system: int | None = None) -> None:
        """Append `atoms` (with energy and forces) as the sample at `step` (of `system` when batched)."""
        import io

        import ase.io

        if not self._files:
            self._open()
        trajectory, csv = self._files
        # step and time in the frame's comment line tie each frame to its CSV row.
        atoms.info["step"], atoms.info["time_fs"] = step, step * self._dt_fs
        prefix = ""
        if self._batched:
            atoms.info["system"] = system
            prefix = f"{system},"
        frame = io.StringIO()
        ase.io.write(frame, atoms, format="extxyz")
        trajectory.write(frame.getvalue())
        trajectory.flush()
        potential, kinetic = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        csv.write(f"{prefix}{step},{step * self._dt_fs:.6g},{potential:.10f},{kinetic:.10f},"
                  f"{potential + kinetic:.10f},{atoms.get_temperature():.4f}\n")
        csv.flush()

    def close(self) -> None:
        for handle in self._files:
            handle.close()
