"""Model inference of one batch's rows, in chunks, overlapped with the work around it.

ONNX Runtime releases the GIL while it runs, so a second thread can run a chunk of a batch's feature rows
through every model while the event loop's thread goes on: :class:`Ahead` starts a chunk as soon as the
state updates of a batch have closed ``scoring.overlap_rows`` rows (the other patients of the batch are
applied meanwhile); the batch's last rows follow on the same thread, and :func:`chunks` hands every chunk back in
row order as it comes back, so the caller builds a chunk's score records while the next chunks run. The alert
policy steps only once every chunk is back, so a model error is seen before any patient's alert state has moved
(the worker then scores patient by patient, as with one call, and drops the records built so far). The results
are the same as one call over the whole batch: each row's features and tree-ensemble / network output do not
depend on the other rows of its call (``intra_op_num_threads`` 1); tests/test_infer.py compares every record. A
batch of at most ``overlap_rows`` rows (every batch at live rates) is one call on the caller's thread, as is every
batch with ``overlap_rows = 0``.

"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from vigil.abstain import scored
from vigil.features import featurize, sequence
from vigil.state import FeatureInput, Snapshot, stack_snapshots

__all__ = ["Ahead", "Chunk", "chunks"]

_POOL: ThreadPoolExecutor | None = None  # one inference thread per process, started on first use


@dataclass(frozen=True, slots=True)
class Chunk:
    """Rows ``start:stop`` of the batch: per model (in the order given), ``(risk, indeterminate, reasons)``
    as :func:`vigil.abstain.scored` returns them, and the seconds each model's call took."""

    start: int
    stop: int
    results: list[tuple[np.ndarray, Any, Any]]
    seconds: list[float]


def _run_at(models: Sequence[Any], x: np.ndarray, seq: np.ndarray | None, start: int) -> Chunk:
    results, seconds = [], []
    for sc in models:
        t0 = time.perf_counter()
        results.append(scored(sc, x, seq))
        seconds.append(time.perf_counter() - t0)
    return Chunk(start, start + x.shape[0], results, seconds)


class Ahead:
    """Inference of a batch's rows started while the batch is still being applied: :meth:`offer` after each
    patient's state update submits every full chunk of ``rows`` rows closed so far (featurized on the
    caller's thread, inferred on the inference thread); :meth:`close` featurizes the rest. ``rows`` 0: nothing
    is started early (one chunk, inferred on the caller's thread when :func:`chunks` reads it)."""

    def __init__(self, models: Sequence[Any], rows: int) -> None:
        self.models = list(models)
        self.rows = rows
        self.needs_sequence = any(getattr(sc, "needs_sequence", False) for sc in self.models)
        self.parts: list[tuple[int, np.ndarray, np.ndarray | None, Future[Chunk] | None]] = []  # start, x, seq
        self.done = 0  # rows featurized
        self.featurize_s = 0.0

    def _features(self, snaps: list[Snapshot]) -> tuple[FeatureInput, np.ndarray, np.ndarray | None]:
        t0 = time.perf_counter()
        inp = stack_snapshots(snaps)
        x = featurize(inp)
        seq = sequence(inp) if self.needs_sequence else None
        self.featurize_s += time.perf_counter() - t0
        return inp, x, seq

    def offer(self, snaps: list[Snapshot]) -> None:
        if self.rows <= 0:
            return
        while len(snaps) - self.done >= self.rows:
            a, b = self.done, self.done + self.rows
            _, x, seq = self._features(snaps[a:b])
            self.parts.append((a, x, seq, _pool().submit(_run_at, self.models, x, seq, a)))
            self.done = b

    def close(self, snaps: list[Snapshot]) -> tuple[FeatureInput | None, np.ndarray]:
        """Featurize the rows not offered yet; returns the whole batch's feature input when it was featurized
        in one piece (else None: :func:`vigil.state.stack_snapshots` it again if needed) and feature matrix."""
        self.offer(snaps)  # full chunks not offered yet (a caller that did not offer as it went)
        inp = None
        if self.done < len(snaps):
            inp, x, seq = self._features(snaps[self.done :])
            # the last rows: after the started chunks on the inference thread (the caller builds the records of the
            # chunks back meanwhile); a batch of one chunk on the caller's thread (chunks), with no thread hop
            fut = _pool().submit(_run_at, self.models, x, seq, self.done) if self.parts else None
            self.parts.append((self.done, x, seq, fut))
            self.done = len(snaps)
            if len(self.parts) > 1:
                inp = None
        xs = [x for _, x, _, _ in self.parts]
        return inp, xs[0] if len(xs) == 1 else np.concatenate(xs)

    def wait(self) -> None:
        """Let every started call finish (their results unread): no call outlives its batch."""
        for _, _, _, fut in self.parts:
            if fut is not None and not fut.cancel():
                fut.exception()


def _pool() -> ThreadPoolExecutor:
    global _POOL  # noqa: PLW0603 - one thread per process, shared by every processor
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-infer")
    return _POOL


def _forget_pool() -> None:
    """In a forked child: the parent's inference thread does not exist there (its pool would queue work that
    no thread runs), so the child starts its own on first use."""
    global _POOL  # noqa: PLW0603
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def chunks(ahead: Ahead) -> Iterator[Chunk]:
    """Every chunk of ``ahead`` (closed) scored by every model, in row order, each as soon as it is back (a chunk
    not started is run on the caller's thread). Close it (``contextlib.closing``): when it is closed, exhausted or
    left by an error, every started call has finished, so no call outlives the batch. A model error is raised when
    its chunk is reached, once every call has finished; the caller steps no alert state before the last chunk."""
    try:
        for a, x, seq, fut in ahead.parts:
            if fut is None:
                yield _run_at(ahead.models, x, seq, a)
            else:
                try:
                    yield fut.result()
                except Exception:
                    ahead.wait()  # every other call finished before the error reaches the caller
                    raise
    finally:
        ahead.wait()
