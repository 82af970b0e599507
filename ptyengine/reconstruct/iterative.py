"""The loop owner for iterative reconstructions: iterations, error history, checkpoints.

An algorithm supplies a state (arrays on ``xp``) and one function ``sweep(state,
iteration) -> error`` that performs one full pass over the data; :func:`run` does the
rest: progress, divergence checks, checkpoints every N iterations and resumption.

Reproducibility: every random choice of iteration k must come from
``numpy.random.default_rng([seed, k])`` (see :func:`iteration_rng`), so a run resumed from
a checkpoint continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import backend
from ..errors import PtyengineError, atomic_file


@contextmanager
def opened(data, device: str):
    """(dataset, xp) for an iterative reconstruction of ``data`` (a path, io.Dataset or
    InMemoryDataset) on ``device``: a dataset opened here from a path is closed at the
    end, and on a GPU the batch-sized FFT buffers (device memory) are freed."""
    from ..dataset import as_dataset

    xp = backend.get_xp(device)
    ds = as_dataset(data)
    try:
        yield ds, xp
    finally:
        if ds is not data:
            ds.close()
        if xp is not np:
            backend.clear_fft_buffers()


def iteration_rng(seed: int, iteration: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(iteration)])


@dataclass
class IterativeState:
    """Arrays of a reconstruction (name -> xp array), iterations done, error history."""

    arrays: dict
    iteration: int = 0
    errors: list[float] = field(default_factory=list)

    def is_finite(self, xp) -> bool:
        return all(bool(xp.isfinite(a).all()) for a in self.arrays.values())


def save_checkpoint(path, state: IterativeState, fingerprint: str) -> None:
    """Atomically write the state to ``path`` (.npz): through a temporary file that a
    failed or interrupted write removes; an ``OSError`` (a full disk) becomes one
    :class:`PtyengineError` naming ``path``, and the previous checkpoint stays."""
    path = Path(path)
    host = {k: backend.to_numpy(v) for k, v in state.arrays.items()}
    meta = json.dumps({"iteration": state.iteration, "errors": state.errors,
                       "fingerprint": fingerprint})  # fmt: skip
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, __meta__=np.array(meta), **host)


def load_checkpoint(path, fingerprint: str, xp) -> IterativeState:
    """Read a checkpoint written by :func:`save_checkpoint` for the same parameters."""
    path = Path(path)
    try:
        with np.load(path) as f:
            meta = json.loads(str(f["__meta__"]))
            arrays = {k: xp.asarray(f[k]) for k in f.files if k != "__meta__"}
        iteration, errors = int(meta["iteration"]), [float(e) for e in meta["errors"]]
    except FileNotFoundError:
        raise PtyengineError(f"no checkpoint to resume from at {path}") from None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise PtyengineError(f"checkpoint {path} is unreadable (truncated or damaged: "
                             f"{type(exc).__name__}: {exc}); delete it, or start afresh "
                             "without --resume") from None  # fmt: skip
    if meta.get("fingerprint") != fingerprint:
        raise PtyengineError(
            f"checkpoint {path} was written for other data or parameters; "
            "resume with the same ones, or start afresh without --resume")
    return IterativeState(arrays, iteration, errors)


def run(
    state: IterativeState,
    sweep: Callable[[IterativeState, int], float],
    n_iterations: int,
    xp,
    fingerprint: str = "",
    checkpoint: str | None = None,
    checkpoint_every: int = 0,
    progress: Callable[[int, float], None] | None = None,
    stop: Callable[[IterativeState], bool] | None = None,
) -> IterativeState:
    """Run ``sweep`` until ``state.iteration == n_iterations``, or until ``stop(state)``
    (asked after every iteration: an algorithm's own stopping rule) is true.

    After each iteration the state is checked for NaN/inf: a diverged run raises and
    leaves the last good checkpoint in place. With ``checkpoint`` and
    ``checkpoint_every`` > 0 the state is saved every N iterations and at the end. A
    state (resumed from a checkpoint) already past ``n_iterations`` is refused: it cannot
    be wound back, and reporting its iterations as the ones asked for would mislead.
    """
    if state.iteration > n_iterations:
        where = f"checkpoint {checkpoint}" if checkpoint else "the state to resume"
        raise PtyengineError(
            f"{where} holds {state.iteration} iterations, more than --iterations "
            f"{n_iterations} asks for; give --iterations {state.iteration} or more, or start "
            "afresh without --resume")
    while state.iteration < n_iterations:
        k = state.iteration
        err = float(sweep(state, k))
        if not (np.isfinite(err) and state.is_finite(xp)):
            where = f"; the last good checkpoint is {checkpoint}" if checkpoint else ""
            raise PtyengineError(
                f"the reconstruction diverged at iteration {k + 1} (NaN or inf in the "
                f"object or probe){where}; try smaller step sizes")
        state.errors.append(err)
        state.iteration = k + 1
        if progress:
            progress(state.iteration, err)
        done = state.iteration == n_iterations or (stop is not None and stop(state))
        if checkpoint and checkpoint_every and (state.iteration % checkpoint_every == 0 or done):
            save_checkpoint(checkpoint, state, fingerprint)
        if done:
            break
    return state
