"""ExactReader reads the vectors Chroma holds exactly as Chroma holds them (issue 11: the cold search that does
not open Chroma's engine): saved index, write log, deletes and updates; anything it does not know goes to the
engine."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from docqa.archive import exact
from docqa.archive.chroma import EngineReader, local_client
from docqa.archive.exact import ExactReader, UnknownLayout
from testkit.documents import real_text_paragraphs, write_text
from tests.helpers import invoke


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _collection(store: Path, space: str = "cosine") -> tuple[Any, Any]:
    client = local_client(store)
    return client, client.get_or_create_collection("docqa", embedding_function=None, metadata={"hnsw:space": space})


def _write(collection: Any, ids: list[str], vectors: np.ndarray) -> None:
    for start in range(0, len(ids), 500):
        collection.upsert(ids=ids[start : start + 500], embeddings=vectors[start : start + 500].tolist())


def _held(collection: Any) -> dict[str, np.ndarray]:
    got = collection.get(include=["embeddings"])
    return dict(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32), strict=True))


@pytest.mark.parametrize("size", [60, 2_600])  # all in the write log; saved twice (sync threshold 1000) plus a log
def test_the_reader_holds_what_chroma_holds(tmp_path: Path, size: int) -> None:
    rng = np.random.default_rng(size)
    ids = [f"chunk-{n}" for n in range(size)]
    client, collection = _collection(tmp_path)
    _write(collection, ids, _unit(rng, size))
    collection.delete(ids=ids[5:25])  # deleted ones
    _write(collection, ids[30:40] + ["new-1", "new-2"], _unit(rng, 12))  # updated in place, and new ones
    held = _held(collection)
    client.close()

    reader = ExactReader(tmp_path, "docqa")
    assert sorted(reader.ids) == sorted(held) and len(held) == size - 20 + 2
    for chunk_id, vector in zip(reader.ids, reader._vectors, strict=True):
        assert np.allclose(vector, held[chunk_id] / np.linalg.norm(held[chunk_id]), atol=1e-6), chunk_id

    # The nearest by brute force over what Chroma returns; Chroma's own search is approximate (and on random
    # vectors often misses some), never nearer.
    names = list(held)
    matrix = np.stack([held[n] / np.linalg.norm(held[n]) for n in names])
    engine = EngineReader(tmp_path, "docqa")
    for query in _unit(rng, 5):
        exact_ids, exact_distances = reader.nearest([query.tolist()], 10)
        expected = np.argsort(1.0 - matrix @ query, kind="stable")[:10]
        assert set(exact_ids) == {names[k] for k in expected}
        assert np.allclose(exact_distances, np.sort(1.0 - matrix @ query)[:10], atol=1e-5)
        _, engine_distances = engine.nearest([query.tolist()], 10)
        assert np.all(np.array(exact_distances) <= np.array(engine_distances) + 1e-5)
    engine.close()


def test_layouts_it_does_not_know_go_to_chromas_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    client, collection = _collection(tmp_path / "l2", space="l2")
    _write(collection, ["a", "b"], _unit(rng, 2))
    client.close()
    with pytest.raises(UnknownLayout):
        ExactReader(tmp_path / "l2", "docqa")

    client, collection = _collection(tmp_path / "big")
    _write(collection, [f"c{n}" for n in range(150)], _unit(rng, 150))
    client.close()
    monkeypatch.setattr(exact, "EXACT_LIMIT", 100)
    with pytest.raises(UnknownLayout):
        ExactReader(tmp_path / "big", "docqa")
    with pytest.raises(UnknownLayout):
        ExactReader(tmp_path / "nothing", "docqa")  # no Chroma files at all



def test_a_store_searches_through_the_reader_and_through_the_engine_alike(tmp_path: Path, embedder: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from docqa.archive.store import ArchivalStore
    from docqa.cli.config import resolve

    paragraphs = real_text_paragraphs(12)
    for n, text in enumerate(paragraphs):
        write_text(tmp_path / "docs" / f"p{n}.txt", text)
    assert invoke("ingest", tmp_path / "docs").exit_code == 0
    query = " ".join(paragraphs[7].split()[:10])
    rankings = {}
    for limit, kind in ((exact.EXACT_LIMIT, ExactReader), (5, EngineReader)):
        monkeypatch.setattr(exact, "EXACT_LIMIT", limit)
        store = ArchivalStore(resolve())
        rankings[kind] = store.ranking(query, "dense")
        assert isinstance(store._reader, kind)
        store._close_reader()
        store.catalog.close()
    assert rankings[ExactReader][0][0] == rankings[EngineReader][0][0]
    assert [i for i, _ in rankings[ExactReader]] == [i for i, _ in rankings[EngineReader]]  # 12 chunks: all
    assert np.allclose([s for _, s in rankings[ExactReader]], [s for _, s in rankings[EngineReader]], atol=1e-5)


def test_a_damaged_saved_index_is_not_read_as_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    client, collection = _collection(tmp_path)
    _write(collection, [f"c{n}" for n in range(1_200)], _unit(rng, 1_200))
    client.close()
    (pickled,) = (tmp_path / "chroma").glob("*/index_metadata.pickle")
    pickled.write_bytes(b"garbage")
    with pytest.raises(UnknownLayout):
        ExactReader(tmp_path, "docqa")

    # A store someone else made: its pickle is read as plain values only, never run.
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str, str]]:
            return (open, (str(marker), "w"))  # what pickle.loads would run: it would make the file

    pickled.write_bytes(pickle.dumps({"label_to_id": Payload()}))
    pickle.loads(pickled.read_bytes())  # noqa: S301 - the file is ours: this shows it would run
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnknownLayout):
        ExactReader(tmp_path, "docqa")
    assert not marker.exists()
