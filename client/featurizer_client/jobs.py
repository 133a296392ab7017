"""``embed_to`` / ``predict_to``: a bulk job written to disk as it goes, resumable after a crash.

A ``Job`` takes the outcomes of a bulk stream in input order and writes each at once (a row of
the matrix and a line of the names file, or a line of the failures file), so memory stays flat
however long the job. Every ``commit_every`` items it makes the files durable and rewrites the
journal (``journal.py``). Resuming skips the inputs the journal counts without reading them and
goes on from there; the files then hold exactly what an uninterrupted run writes.

Content de-duplication (``dedup=True``, embed only): an input whose bytes equal an earlier one's
is not sent; its row is copied from the earlier row (or it gets the earlier one's failure). The
job keeps one sha256 per distinct input; on resume the skipped inputs are hashed again (read, not
sent), so copies after the resume point still find their originals.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Optional, TypeVar, Union

import grpc
import numpy as np

from .journal import Journal, fingerprint
from .messages import Prediction
from .chunking import Progress
from .outputs import LineFile, NpyRows, OutputPaths, write_empty_npy
from .sources import Item, Source, Unreadable, source_of
from .window import DEFAULT_BULK_IN_FLIGHT, Duplicate, Failure, ItemFailure, OnError, Outcome, Result, Window

DEFAULT_COMMIT_EVERY = DEFAULT_BULK_IN_FLIGHT  # a kill re-sends at most this plus the window in flight


class Results(enum.Enum):
    """What a job's results file holds."""

    MATRIX = "matrix"  # embed: a .npy, one row per good input, and a names file beside it
    LINES = "lines"    # predict: JSON lines, each naming its input


@dataclass
class Summary:
    """What a job did. ``failures`` lists the refused inputs (all of them, also from before a resume)."""

    paths: OutputPaths
    total: int
    rows: int
    failed: int
    duplicates: int = 0
    resumed_at: int = 0          # inputs skipped because the journal had them already
    sent: int = 0                # stream messages sent by this run, retries included
    failures: list[Failure] = field(default_factory=list)


def prediction_json(source: Source, p: Prediction) -> dict:
    out: dict = {"image": source, "label": p.label, "index": p.index, "probability": p.probability,
                 "classes": [{"label": c.label, "index": c.index, "probability": c.probability} for c in p.classes]}
    if p.positive_probability is not None:
        out["positive_probability"] = p.positive_probability
    if p.features is not None:
        out["features"] = p.features.astype(float).tolist()
    return out


def failure_json(failure: Failure) -> str:
    return json.dumps({"index": failure.index, "source": failure.source, "code": failure.code.name,
                       "message": failure.message}, ensure_ascii=False)


def read_failures(path: os.PathLike) -> list[Failure]:
    """The failures file as ``Failure`` objects (the committed part, when a job is resumed)."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Failure(r["index"], r["source"], grpc.StatusCode[r["code"]], r["message"]) for r in rows]


class Job:
    """One output's state: its files, the journal, and the counters written into it."""

    def __init__(self, paths: OutputPaths, values: list, description: dict, results: Results, *,
                 on_error: OnError, resume: bool, dedup: bool, commit_every: int = DEFAULT_COMMIT_EVERY) -> None:
        if commit_every < 1:
            raise ValueError(f"commit_every: expected >= 1, got {commit_every}")
        if dedup and results is not Results.MATRIX:
            raise ValueError("dedup: only embedding jobs copy rows; predictions are written per input")
        self.paths, self.values, self.results, self.dedup = paths, values, results, dedup
        self.on_error, self.commit_every = OnError(on_error), commit_every
        self.sources = [source_of(v, i) for i, v in enumerate(values)]
        self.job = fingerprint({**description, "results": results.value, "dedup": dedup}, self.sources)
        journal = Journal.load(paths.journal) if resume else None
        if journal is not None:
            journal.check(self.job, paths.journal)
        else:
            for path in paths.all():  # first the journal: a crash now must not leave a stale one
                if path.exists():
                    path.unlink()
            journal = Journal(self.job, len(values))
        self.journal = journal
        self.start, self.done, self.rows = journal.done, journal.done, journal.rows
        self.duplicates, self.failed = 0, 0
        self.matrix: Optional[NpyRows] = None
        self._lines: Optional[LineFile] = None
        self._names: Optional[LineFile] = None
        self._failures: Optional[LineFile] = None
        self.failures: list[Failure] = []
        self._seen: dict[bytes, int] = {}            # sha256 -> index of the first input with it
        self._row_of: dict[int, int] = {}            # that input's row
        self._failure_of: dict[int, Failure] = {}    # or its failure
        if journal.complete:
            return
        self._open(journal)

    @property
    def complete(self) -> bool:
        return self.journal.complete

    def _open(self, journal: Journal) -> None:
        resumed = journal.done > 0
        self._failures = LineFile(self.paths.failures, journal.failures_bytes if resumed else None)
        if resumed:
            self.failures = read_failures(self.paths.failures)
            self.failed = len(self.failures)
        if self.results is Results.LINES:
            self._lines = LineFile(self.paths.results, journal.results_bytes if resumed else None)
            return
        self._names = LineFile(self.paths.names, journal.names_bytes if resumed else None)
        if journal.row_shape is not None:
            self.matrix = NpyRows(self.paths.results, len(self.values), journal.row_shape, np.dtype(journal.dtype),
                                  existing=self.paths.results.exists())

    def items(self) -> Iterator[Union[Item, Duplicate]]:
        """The inputs left to do, as stream items (or copies, with ``dedup``)."""
        items = (Item(i, self.sources[i], self.values[i]) for i in range(self.start, len(self.values)))
        if not self.dedup:
            return items
        self._replay()
        return self._deduplicated(items)

    def _replay(self) -> None:
        """Rebuild the sha256 table of the inputs a resume skips (read again, never sent)."""
        failed = {f.index: f for f in self.failures}
        row = 0
        for i in range(self.start):
            item = Item(i, self.sources[i], self.values[i])
            try:
                digest = item.content_digest()
            except Unreadable:
                digest = b""
            if i not in failed:
                row += 1
            if digest and digest not in self._seen:
                self._seen[digest] = i
                if i in failed:
                    self._failure_of[i] = failed[i]
                else:
                    self._row_of[i] = row - 1

    def _deduplicated(self, items: Iterator[Item]) -> Iterator[Union[Item, Duplicate]]:
        for item in items:
            try:
                digest = item.content_digest()
            except Unreadable:
                yield item  # the window reads it again and records the failure
                continue
            first = self._seen.setdefault(digest, item.index)
            if first == item.index:
                yield item
            else:
                item.release()
                yield Duplicate(item.index, item.source, first)

    def write(self, outcome: Outcome) -> None:
        """Write one outcome (they come in input order) and commit every ``commit_every``."""
        if isinstance(outcome, Duplicate):
            self.duplicates += 1
            original = self._failure_of.get(outcome.of)
            if original is not None:
                outcome = Failure(outcome.index, outcome.source, original.code, original.message)
            else:
                self._copy_row(outcome)
        if isinstance(outcome, Failure):
            self._fail(outcome)
        elif isinstance(outcome, Result):
            self._write_result(outcome)
        self.done += 1
        if (self.done - self.start) % self.commit_every == 0:
            self.commit()

    def _fail(self, failure: Failure) -> None:
        if self.on_error is OnError.RAISE:
            raise ItemFailure(failure)
        if self.dedup:
            self._failure_of[failure.index] = failure
        _opened(self._failures).write_line(failure_json(failure))
        self.failures.append(failure)
        self.failed += 1

    def _write_result(self, result: Result) -> None:
        if self.results is Results.LINES:
            _opened(self._lines).write_line(json.dumps(prediction_json(result.source, result.value), ensure_ascii=False))
            self.rows += 1
            return
        row = np.asarray(result.value)
        if self.matrix is None:
            self.matrix = NpyRows(self.paths.results, len(self.values), row.shape, row.dtype, existing=False)
        self.matrix.write(self.rows, row)
        _opened(self._names).write_line(str(result.source))
        if self.dedup:
            self._row_of[result.index] = self.rows
        self.rows += 1

    def _copy_row(self, duplicate: Duplicate) -> None:
        _opened(self.matrix).copy(self._row_of[duplicate.of], self.rows)
        _opened(self._names).write_line(str(duplicate.source))
        self.rows += 1

    def _state(self, complete: bool = False) -> Journal:
        matrix = self.matrix
        return Journal(self.job, len(self.values), self.done, self.rows,
                       None if matrix is None else matrix.row_shape, "" if matrix is None else matrix.dtype.str,
                       0 if self._lines is None else self._lines.size, 0 if self._names is None else self._names.size,
                       _opened(self._failures).size, complete)

    def commit(self) -> None:
        """Make everything written so far durable, then say so in the journal."""
        for f in (self.matrix, self._lines, self._names, self._failures):
            if f is not None:
                f.sync()
        self.journal = self._state()
        self.journal.save(self.paths.journal)

    def finish(self) -> None:
        """The matrix header gets its final count; the journal says the output is complete."""
        if self.results is Results.MATRIX:
            if self.matrix is None:
                write_empty_npy(self.paths.results)
            else:
                self.matrix.finish(self.rows)
        for f in (self._lines, self._names, self._failures):
            if f is not None:
                f.sync()
        self.journal = self._state(complete=True)
        self.journal.save(self.paths.journal)

    def close(self, failed: bool) -> None:
        """Close the files; a job that failed before committing anything leaves none behind."""
        for f in (self.matrix, self._lines, self._names, self._failures):
            if f is not None:
                f.close()
        if failed and self.journal.done == 0 and not self.paths.journal.exists():
            for path in self.paths.all():
                if path.exists():
                    path.unlink()

    def summary(self, sent: int = 0) -> Summary:
        if self.complete and not self.failures and self.journal.failures_bytes:
            self.failures = read_failures(self.paths.failures)
        return Summary(self.paths, len(self.values), self.journal.rows if self.complete else self.rows,
                       len(self.failures), self.duplicates, self.start, sent, self.failures)


def drive(job: Job, outcomes: Callable[[], Iterable[Outcome]], window: Window, progress: bool) -> Summary:
    """Write every outcome into ``job``; a complete job (a resume after the end) sends nothing."""
    if job.complete:
        return job.summary()
    finished = False
    try:
        with Progress(progress, len(job.values), initial=job.start) as bar:
            for outcome in outcomes():
                job.write(outcome)
                bar.update(1)
        job.finish()
        finished = True
    finally:
        job.close(failed=not finished)
    return job.summary(window.sent)


async def drive_async(job: Job, outcomes: Callable[[], AsyncIterable[Outcome]], window: Window,
                      progress: bool) -> Summary:
    """``drive`` for the asyncio client (the file writes are small and stay on the loop)."""
    if job.complete:
        return job.summary()
    finished = False
    try:
        with Progress(progress, len(job.values), initial=job.start) as bar:
            async for outcome in outcomes():
                job.write(outcome)
                bar.update(1)
        job.finish()
        finished = True
    finally:
        job.close(failed=not finished)
    return job.summary(window.sent)


F = TypeVar("F")


def _opened(file: Optional[F]) -> F:
    """A job's output file; every one the job writes is opened before its first item is handled."""
    if file is None:
        raise RuntimeError("bulk job: an output file was written before it was opened")
    return file
