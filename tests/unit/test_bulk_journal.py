"""The bulk job's pieces without a server: the journal, the .npy writer, line files, the window."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from featurizer_client.errors import FeaturizerError
from featurizer_client.journal import Journal, JournalMismatch, fingerprint
from featurizer_client.outputs import HEADER_BYTES, LineFile, NpyRows, OutputPaths, npy_header
from featurizer_client.sources import Item
from featurizer_client.window import Duplicate, Failure, Result, Window, located


def test_journal_round_trips_and_is_replaced_whole(tmp_path):
    path = tmp_path / "x.journal.json"
    assert Journal.load(path) is None
    first = Journal("abc", 10, done=4, rows=3, row_shape=(9216,), dtype="<f2", names_bytes=40, failures_bytes=90)
    first.save(path)
    Journal("abc", 10, done=8, rows=7, row_shape=(9216,), dtype="<f2").save(path)
    assert Journal.load(path).done == 8 and Journal.load(path).row_shape == (9216,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.journal.json"]  # no temporary left behind
    with pytest.raises(JournalMismatch, match="another job"):
        Journal.load(path).check("other", path)


def test_fingerprint_changes_with_any_source_or_option():
    base = fingerprint({"model": "m"}, ["a.jpg", "b.jpg"])
    assert base == fingerprint({"model": "m"}, ["a.jpg", "b.jpg"])
    assert base != fingerprint({"model": "m"}, ["b.jpg", "a.jpg"])
    assert base != fingerprint({"model": "n"}, ["a.jpg", "b.jpg"])
    assert base != fingerprint({"model": "m"}, ["a.jpgb.jpg"])


def test_npy_rows_are_sized_for_every_input_then_cut_to_the_rows_written(tmp_path):
    path = tmp_path / "x.npy"
    rows = NpyRows(path, 100, (3,), np.dtype("<f2"), existing=False)
    for i in range(5):
        rows.write(i, np.full(3, i, np.float16))
    rows.copy(1, 5)
    assert path.stat().st_size == HEADER_BYTES + 100 * 6
    rows.finish(6)
    rows.close()
    X = np.load(path)
    assert X.dtype == np.float16 and X.tolist() == [[i] * 3 for i in (0, 1, 2, 3, 4, 1)]
    assert len(npy_header((2**63 - 1, 2**31 - 1, 2**31 - 1, 2**31 - 1), np.dtype("<f4"))) == HEADER_BYTES


def test_a_line_file_resumed_is_cut_back_to_its_committed_size(tmp_path):
    path = tmp_path / "x.names.txt"
    names = LineFile(path, None)
    names.write_line("a.jpg")
    committed = names.size
    names.write_line("b.jp")  # killed in the middle of this line
    names.close()
    again = LineFile(path, committed)
    again.write_line("b.jpg")
    again.close()
    assert path.read_text() == "a.jpg\nb.jpg\n"
    assert OutputPaths.beside(tmp_path / "emb.npy").names.name == "emb.names.txt"


def items(n: int) -> list[Item]:
    return [Item(i, f"{i}.png", b"x") for i in range(n)]


def test_window_hands_answers_back_in_input_order_and_holds_at_most_its_size():
    window = Window(iter(items(5)), max_in_flight=3)
    taken = [window.take(), window.take(), window.take()]
    assert window.take() is None  # full: three taken, none handed back
    window.answered(taken[2], "c")
    window.failed(taken[1], grpc.StatusCode.INVALID_ARGUMENT, "images[0]: cannot decode")
    assert list(window.ready()) == []  # item 0 is still out
    window.answered(taken[0], "a")
    out = list(window.ready())
    assert [type(o) for o in out] == [Result, Failure, Result]
    assert out[1] == Failure(1, "1.png", grpc.StatusCode.INVALID_ARGUMENT, "cannot decode")
    assert out[1].describe() == "images[1] (1.png): cannot decode"


def test_window_sends_unanswered_items_again_first_and_gives_up_after_max_attempts():
    window = Window(iter(items(3)), max_in_flight=3, max_attempts=2)
    first = window.take()
    window.sent_one(first)
    window.retry(first, FeaturizerError(grpc.StatusCode.UNAVAILABLE, "gone"))
    assert window.take() is first  # the retry before new inputs
    window.sent_one(first)
    with pytest.raises(FeaturizerError, match="still unanswered after 2 attempts"):
        window.retry(first, FeaturizerError(grpc.StatusCode.UNAVAILABLE, "gone"))


def test_errors_about_the_job_are_not_item_failures():
    window = Window(iter(items(1)))
    with pytest.raises(FeaturizerError) as raised:
        window.failed(window.take(), grpc.StatusCode.NOT_FOUND, "model 'x' not found")
    assert raised.value.code is grpc.StatusCode.NOT_FOUND


def test_duplicates_are_handed_back_in_place_without_being_sent():
    source = iter([items(1)[0], Duplicate(1, "1.png", of=0)])
    window = Window(source)
    first = window.take()
    assert window.take() is None
    window.answered(first, "row")
    assert [type(o) for o in window.ready()] == [Result, Duplicate]


def test_a_chunk_error_is_named_by_its_global_index_and_file():
    error = FeaturizerError(grpc.StatusCode.INVALID_ARGUMENT, "images[6]: cannot decode JPEG data")
    sources = [f"{i}.jpg" for i in range(64, 76)]
    assert located(error, 64, sources).details == "images[70] (70.jpg): cannot decode JPEG data"
    assert located(FeaturizerError(grpc.StatusCode.NOT_FOUND, "model"), 64, sources).details == "model"
