"""embed-file: every format, bad rows, a SIGKILL and a resume, refused resumes, and the Ray Data scale-out."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e5.__main__ import main
from e5.bulk import BulkError, JobOptions, embed_file, parts_dir, read_embeddings
from e5.bulk import job as bulk_job
from e5.encoder import Encoder
from e5.loader import load_encoder
from e5.prompts import DEFAULT_TASK, InputType, UnknownTaskError, format_text
from e5.registry import DEMO_MODEL, get_spec
from e5.service import EmbeddingService
from e5.settings import Settings

from conftest import REPO_ROOT

# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow

WORDS = ("protein river mountain engine quiet market garden lamp story ocean train window music paper stone "
         "pumpkin recipe guideline marathon average requirement women grams chart Größe café").split()


def corpus(count: int, seed: int = 0, longest: int = 40) -> list[str]:
    """`count` texts of 3 to `longest` words (seeded)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, longest))) for _ in range(count)]


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def library_vectors(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """What the library itself gives for passages: the reference for every format."""
    formatted = [format_text(t, InputType.PASSAGE, encoder.spec.prompt_style, DEFAULT_TASK) for t in texts]
    return encoder.embed(formatted)[0].numpy()


def _kill_after_three_parts(job: subprocess.Popen, out: Path) -> None:
    """SIGKILL an embed-file command as soon as three parts of `out` are durable (within 300 s)."""
    deadline = time.monotonic() + 300
    while len(list(parts_dir(out).glob("part-*.parquet"))) < 3:
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no three parts within 300 s"
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)


def run_cli(*args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "e5", "embed-file", *args], cwd=REPO_ROOT,
                            env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --- formats and bad rows (tiny checkpoint, in process) ------------------------------------

TEXTS = ["how much protein should a female eat", "46 grams a day, more for a marathon",
         "a pumpkin recipe, with scallions", "Größe und café", "the river runs past the old mill"]


def write_format(fmt: str, directory: Path, texts: list[str], with_ids: bool = True) -> Path:
    ids = [f"doc-{i}" for i in range(len(texts))]
    if fmt == "jsonl":
        return write_jsonl(directory / "in.jsonl", [{"id": i, "text": t} for i, t in zip(ids, texts)])
    if fmt == "csv":
        path = directory / "in.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "text"])
            writer.writerows(zip(ids, texts))
        return path
    if fmt == "parquet":
        path = directory / "in.parquet"
        pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=2)
        return path
    path = directory / "in.txt"
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "text"])
def test_every_format_gives_the_librarys_vectors_under_its_ids(fmt, encoders, tmp_path):
    encoder = encoders["bert"]
    texts = TEXTS + ["a text with a comma, and \"quotes\""]
    source = write_format(fmt, tmp_path, texts)
    done = embed_file(EmbeddingService(encoder), source, tmp_path / "out.parquet", chunk_rows=4, progress=False)
    ids, vectors = read_embeddings(tmp_path / "out.parquet")
    expected_ids = [str(i + 1) for i in range(len(texts))] if fmt == "text" else [f"doc-{i}" for i in range(len(texts))]
    assert ids == expected_ids and done.rows == len(texts) and done.bad_rows == 0
    np.testing.assert_allclose(vectors, library_vectors(encoder, texts), atol=1e-5)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), encoder.dimensions)
    assert pq.ParquetFile(tmp_path / "out.parquet").num_row_groups == 2  # one per chunk of 4
    assert table["token_count"].to_pylist() == [len(row) for row in encoder.text_tokenizer.tokenize(
        [format_text(t, InputType.PASSAGE, encoder.spec.prompt_style, DEFAULT_TASK) for t in texts]).ids]
    assert not parts_dir(tmp_path / "out.parquet").exists()


def test_bad_rows_are_reported_by_line_and_skipped_with_a_count(checkpoints, tmp_path, monkeypatch, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "text": "hello world"},
        {"id": "b"},
        {"id": "c", "text": "   "},
        {"id": "d", "text": ["not", "a", "string"]},
        "this line is not JSON",
        {"id": "e", "text": "word " * 700},
        {"text": "no id: the line number stands in"},
        {"id": "f", "text": None},
        {"id": "g", "text": "bad \x00 control"},
        {"id": "h", "text": "the last good one"},
    ])
    monkeypatch.setenv("E5_WEIGHTS_DIR", str(checkpoints["bert"]))
    out = tmp_path / "out.parquet"
    assert main(["embed-file", str(source), "--out", str(out), "--model", "e5-small-v2", "--no-truncate",
                 "--no-progress", "--chunk-rows", "3"]) == 0
    err = capsys.readouterr().err
    for line in ("e5: skipped line 2: no 'text' field",
                 "e5: skipped line 3: text is empty or only whitespace",
                 "e5: skipped line 4: text must be a string, not list",
                 "e5: skipped line 5: not a JSON object (Expecting value)",
                 "e5: skipped line 8: text is null",
                 "e5: skipped line 9: text has a control character (U+0000) at character 4"):
        assert line in err, err
    assert re.search(r"e5: skipped line 6: text has more than the 512 tokens that e5-small-v2 accepts; "
                     r"--no-truncate", err)
    assert re.fullmatch(rf"e5: {re.escape(str(out))}: 3 embeddings, \d+ tokens, 7 bad rows skipped \(done\)",
                        err.strip().splitlines()[-1])
    assert read_embeddings(out)[0] == ["a", "7", "h"]
    assert json.loads(pq.read_schema(out).metadata[b"e5.bulk"])["bad_rows"] == 7


def test_under_float16_no_vector_written_is_non_finite_and_a_row_that_stays_so_stops_the_job(
        overflowing_bert, tmp_path, monkeypatch, capsys):
    # The checkpoint overflows float16 on every row (recomputed in float32) and float32 too on its poison word.
    from tiny_checkpoints import OVERFLOW_POISON

    monkeypatch.setenv("E5_WEIGHTS_DIR", str(overflowing_bert))
    monkeypatch.setenv("E5_DTYPE", "float16")
    monkeypatch.setenv("E5_CACHE_DIR", str(tmp_path / "cache"))
    texts = [*TEXTS, LONG_TEXT]
    args = ["--model", "e5-small-v2", "--no-progress", "--chunk-rows", "2"]
    good = write_jsonl(tmp_path / "good.jsonl", [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)])
    for mode in ("truncate", "chunks", "mean"):
        out = tmp_path / f"good-{mode}.parquet"
        assert main(["embed-file", str(good), "--out", str(out), "--long-texts", mode, *args]) == 0
        vectors = read_embeddings(out)[1]
        assert np.isfinite(vectors).all() and len(vectors) >= len(texts)
    reference = load_encoder(get_spec("e5-small-v2"), overflowing_bert, settings=Settings.from_env(
        {"E5_DTYPE": "float32", "E5_CPU_RUNTIME": "torch", "E5_CACHE_DIR": str(tmp_path / "cache")}))
    expected = library_vectors(reference, texts)
    vectors = read_embeddings(tmp_path / "good-truncate.parquet")[1]
    cosine = (vectors * expected).sum(1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() > 0.99

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "text": "the dog"}, {"id": "b", "text": "a cat"},
                                               {"id": "c", "text": f"the {OVERFLOW_POISON}"}])
    out = tmp_path / "bad.parquet"
    capsys.readouterr()
    assert main(["embed-file", str(bad), "--out", str(out), *args]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "e5: line 3 could not be embedded: the model's output for it is not finite in float16, nor in float32 when "
        "recomputed (an activation overflows even float32), so E5_DTYPE=float32 does not avoid it; check the "
        "checkpoint's weights")
    assert not out.exists()
    assert [p.name for p in sorted(parts_dir(out).glob("part-*.parquet"))] == ["part-000000.parquet"]  # lines 1-2


def test_an_over_long_text_is_cut_by_default_like_the_predictor(encoders, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "long", "text": "word " * 700}])
    embed_file(EmbeddingService(encoders["bert"]), source, tmp_path / "out.parquet", progress=False)
    assert pq.read_table(tmp_path / "out.parquet")["token_count"].to_pylist() == [512]


class Interrupted(Exception):
    pass


def interrupt_after(monkeypatch, parts: int) -> None:
    """Make the job stop, as a kill would, once `parts` parts are on disk."""
    real = bulk_job.write_part

    def write_part(directory, index, *args, **kwargs):
        if index == parts:
            raise Interrupted
        return real(directory, index, *args, **kwargs)

    monkeypatch.setattr(bulk_job, "write_part", write_part)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "text"])
def test_an_interrupted_job_resumes_where_its_parts_end(fmt, encoders, tmp_path, monkeypatch):
    encoder, texts = encoders["bert"], corpus(11)
    service = EmbeddingService(encoder)
    source = write_format(fmt, tmp_path, texts)
    whole = embed_file(service, source, tmp_path / "whole.parquet", chunk_rows=3, progress=False)
    out = tmp_path / "out.parquet"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(Interrupted):
            embed_file(service, source, out, chunk_rows=3, progress=False)
    assert not out.exists() and len(list(parts_dir(out).glob("part-*.parquet"))) == 2
    done = embed_file(service, source, out, chunk_rows=3, progress=False)
    assert done.resumed_at == 6 and done.rows == whole.rows == 11 and done.tokens == whole.tokens
    ids, vectors = read_embeddings(out)
    whole_ids, whole_vectors = read_embeddings(tmp_path / "whole.parquet")
    assert ids == whole_ids and len(set(ids)) == 11
    np.testing.assert_array_equal(vectors, whole_vectors)


def test_a_resume_with_other_settings_is_refused(encoders, checkpoints, tmp_path, monkeypatch, capsys):
    source = write_format("jsonl", tmp_path, corpus(8))
    bert = EmbeddingService(encoders["bert"])
    out = tmp_path / "out.parquet"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(Interrupted):
            embed_file(bert, source, out, chunk_rows=3, progress=False)
    with pytest.raises(BulkError, match=r"out.parquet.parts/ was written by a job with other settings "
                                        r"\(normalize False -> True\); run again with the same model"):
        embed_file(bert, source, out, JobOptions(normalize=True), chunk_rows=3, progress=False)
    with pytest.raises(BulkError, match=r"model 'e5-small-v2' -> 'multilingual-e5-small'"):
        embed_file(EmbeddingService(encoders["xlm-roberta"]), source, out, chunk_rows=3, progress=False)

    embed_file(bert, source, out, chunk_rows=3, progress=False)
    monkeypatch.setenv("E5_WEIGHTS_DIR", str(checkpoints["bert"]))
    assert main(["embed-file", str(source), "--out", str(out), "--model", "e5-small-v2", "--input-type", "query",
                 "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "e5: out.parquet was written by a job with other settings (input_type 'passage' -> 'query'); run again with "
        "the same model and options, or choose another --out (or delete it to start over)")
    # The same job again finds the output complete and computes nothing.
    interrupt_after(monkeypatch, 0)
    assert embed_file(bert, source, out, progress=False).already_done


def test_job_json_holds_every_setting_and_a_job_stored_before_a_setting_existed_resumes(encoders, tmp_path,
                                                                                         monkeypatch):
    service = EmbeddingService(encoders["bert"])
    source = write_format("jsonl", tmp_path, corpus(8))
    out = tmp_path / "out.parquet"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(Interrupted):
            embed_file(service, source, out, chunk_rows=3, progress=False)
    job_file = parts_dir(out) / "job.json"
    stored = json.loads(job_file.read_text())
    assert stored == {"model": "e5-small-v2", "precision": service.encoder.precision, "input": str(source.resolve()),
                      "format": "jsonl", "input_type": "passage", "task": None, "normalize": False, "truncate": True,
                      "text_field": "text", "id_field": "id", "long_texts": "truncate", "chunk_overlap": None}
    del stored["long_texts"], stored["chunk_overlap"]  # as written before those settings existed: their defaults
    job_file.write_text(json.dumps(stored))
    done = embed_file(service, source, out, chunk_rows=3, progress=False)
    assert done.resumed_at == 3 and done.rows == 8


def test_inputs_and_outputs_it_cannot_use_are_named(encoders, tmp_path):
    encoder = encoders["bert"]
    service = EmbeddingService(encoder)
    with pytest.raises(BulkError, match=r"cannot tell the format of in.dat from its suffix; pass --format"):
        (tmp_path / "in.dat").write_text("x\n")
        embed_file(service, tmp_path / "in.dat", tmp_path / "out.parquet")
    with pytest.raises(BulkError, match=r"in.csv has no column 'body' \(it has 'id', 'text'\); name the text column"):
        embed_file(service, write_format("csv", tmp_path, TEXTS), tmp_path / "out.parquet",
                   JobOptions(text_field="body"))
    (tmp_path / "taken.parquet").write_text("not parquet")
    with pytest.raises(BulkError, match=r"taken.parquet exists and was not written by embed-file"):
        embed_file(service, write_format("text", tmp_path, TEXTS), tmp_path / "taken.parquet")
    with pytest.raises(UnknownTaskError, match=r"task: unknown preset 'websearch'"):  # raised as found, not re-wrapped
        JobOptions(task="websearch")


def test_a_multiline_csv_record_is_reported_at_the_line_it_starts_on(encoders, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('id,text\na,"first line\nsecond line"\nb,\nc,fine\n')
    problems: list[str] = []
    embed_file(EmbeddingService(encoders["bert"]), path, tmp_path / "out.parquet", progress=False,
               report=problems.append)
    assert problems == ["skipped line 4: text is empty or only whitespace; every text needs content"]
    assert read_embeddings(tmp_path / "out.parquet")[0] == ["a", "c"]


# --- memory that does not grow with the corpus --------------------------------------------------

def peak_rss(source: Path, out: Path, weights: Path, chunk_rows: int) -> int:
    """The peak RSS in bytes of `python -m e5 embed-file` over `source` (the child's `ru_maxrss`)."""
    # One thread: the heap's growth is then (nearly) the same run to run, and the job three times faster on two
    # cores than with ONNX Runtime's spinning workers; ONNX Runtime float32 pinned, as `auto` picks it, unmeasured.
    proc = subprocess.Popen([sys.executable, "-m", "e5", "embed-file", str(source), "--out", str(out), "--model",
                             "e5-small-v2", "--no-progress", "--chunk-rows", str(chunk_rows)], cwd=REPO_ROOT,
                            env=dict(os.environ, E5_WEIGHTS_DIR=str(weights), E5_CPU_RUNTIME="onnxruntime",
                                     E5_DTYPE="float32", OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    proc.stderr.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err[-3000:]
    return usage.ru_maxrss * 1024  # Linux reports kilobytes


@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS in ru_maxrss, heap trimming by glibc")
def test_peak_memory_does_not_grow_with_the_corpus(checkpoints, tmp_path):
    # Passes sorted by length allocate ever larger activations that fit none of the holes earlier passes
    # left: untrimmed, the heap grows chunk after chunk (4 chunks peaked 19% above 1). The encoder trims
    # whenever resident memory grew by 32 MiB (e5/memory.py), which keeps 4 chunks within 5% of 1.
    chunk = 1024
    rows = [{"text": t} for t in corpus(4 * chunk, seed=4, longest=80)]  # 3 to 80 words: passes of many widths
    one = peak_rss(write_jsonl(tmp_path / "one.jsonl", rows[:chunk]), tmp_path / "one.parquet", checkpoints["bert"],
                   chunk)
    four = peak_rss(write_jsonl(tmp_path / "four.jsonl", rows), tmp_path / "four.parquet", checkpoints["bert"], chunk)
    assert pq.read_metadata(tmp_path / "four.parquet").num_rows == 4 * chunk
    print(f"embed-file peak RSS: {one / 2**20:,.0f} MiB over {chunk} texts, {four / 2**20:,.0f} MiB over {4 * chunk}")
    assert four <= one * 1.10 + 16 * 2**20, f"{four / one:.3f}x: {one / 2**20:,.0f} -> {four / 2**20:,.0f} MiB"


# --- the real checkpoint: SIGKILL, resume, sentence-transformers ------------------------------

def test_killed_with_sigkill_and_resumed_every_id_once_equal_to_sentence_transformers(minilm_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    texts = corpus(2000, seed=1, longest=10)  # short texts keep the three passes quick
    rows: list[dict | str] = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)]
    for at in (5, 900, 1700):  # bad rows stay skipped, and counted, across the kill
        rows.insert(at, {"id": f"bad-{at}", "text": ""})
    source = write_jsonl(tmp_path / "corpus.jsonl", rows)
    out, chunk = tmp_path / "out.parquet", 200
    args = (str(source), "--out", str(out), "--model", DEMO_MODEL, "--chunk-rows", str(chunk))

    first = run_cli(*args)
    _kill_after_three_parts(first, out)
    assert not out.exists()
    parts = sorted(parts_dir(out).glob("part-*.parquet"))
    assert 3 <= len(parts) < 10
    assert all(pq.read_table(p).num_rows > 0 for p in parts)  # whatever survived the kill is readable

    second = run_cli(*args, "--no-progress")
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    resumed = int(err.split("resumed at row ")[1].split(")")[0])
    assert resumed % chunk == 0 and resumed >= 3 * chunk
    assert "2000 embeddings" in err and "3 bad rows skipped" in err

    ids, vectors = read_embeddings(out)
    assert ids == [f"doc-{i}" for i in range(2000)]  # every id once, in input order
    reference = SentenceTransformer(str(minilm_dir), device="cpu").encode(
        [f"passage: {t}" for t in texts], batch_size=64, normalize_embeddings=True)
    cosine = (vectors * reference).sum(axis=1) / np.linalg.norm(vectors, axis=1)
    print(f"embed-file after SIGKILL vs sentence-transformers: min cosine {cosine.min():.7f}")
    assert cosine.min() >= 0.99999


# --- long texts: a row per window, or their mean -------------------------------------------------

LONG_TEXT = " ".join(f"Sentence {i} is about a river, a mountain and the old mill." for i in range(150))


def test_chunks_write_a_row_per_window_as_the_service_returns_them(encoders, tmp_path):
    from e5.service import EmbeddingRequest, EmbeddingService

    encoder = encoders["bert"]
    service = EmbeddingService(encoder)
    texts = ["short one", LONG_TEXT, "short two"]
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)])
    embed_file(service, source, tmp_path / "chunks.parquet", JobOptions(long_texts="chunks"), progress=False)
    table = pq.read_table(tmp_path / "chunks.parquet")
    assert table.column_names == ["id", "chunk", "start", "end", "token_count", "embedding"]
    served = EmbeddingService(encoder).handle(EmbeddingRequest(texts=texts, long_texts="chunks"))
    owners = served.chunk_text.tolist()
    assert table["id"].to_pylist() == [f"t{i}" for i in owners] and owners.count(1) >= 3
    assert table["chunk"].to_pylist() == [owners[:r].count(owners[r]) for r in range(len(owners))]
    assert table["start"].to_pylist() == served.chunk_start.tolist()
    assert table["end"].to_pylist() == served.chunk_end.tolist()
    np.testing.assert_allclose(read_embeddings(tmp_path / "chunks.parquet")[1], served.embeddings, atol=1e-6)

    embed_file(service, source, tmp_path / "mean.parquet", JobOptions(long_texts="mean", normalize=True),
               progress=False)
    mean = EmbeddingService(encoder).handle(EmbeddingRequest(texts=texts, long_texts="mean", normalize=True))
    ids, vectors = read_embeddings(tmp_path / "mean.parquet")
    assert ids == ["t0", "t1", "t2"]
    np.testing.assert_allclose(vectors, mean.embeddings, atol=1e-6)
    with pytest.raises(BulkError, match=r"long_texts 'mean' -> 'chunks'"):  # a finished job keeps its settings
        embed_file(service, source, tmp_path / "mean.parquet", JobOptions(long_texts="chunks", normalize=True),
                   progress=False)
    with pytest.raises(BulkError, match="--long-texts must be 'truncate', 'chunks' or 'mean', not 'split'"):
        JobOptions(long_texts="split")
    with pytest.raises(BulkError, match="--input-type must be 'query' or 'passage', not 'document'"):
        JobOptions(input_type="document")


def test_chunked_embed_file_killed_and_resumed_writes_every_window_once(tmp_path):
    rows = [{"id": f"doc-{i}", "text": LONG_TEXT[: 2000 + 60 * i] if i % 10 == 0 else f"short text {i}"}
            for i in range(120)]
    source = write_jsonl(tmp_path / "corpus.jsonl", rows)
    out, chunk = tmp_path / "out.parquet", 10
    args = (str(source), "--out", str(out), "--model", DEMO_MODEL, "--chunk-rows", str(chunk), "--long-texts", "chunks")
    first = run_cli(*args)
    _kill_after_three_parts(first, out)
    second = run_cli(*args, "--no-progress")
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    assert "resumed at row" in err
    resumed = pq.read_table(out)
    whole = run_cli(str(source), "--out", str(tmp_path / "whole.parquet"), "--model", DEMO_MODEL,
                    "--chunk-rows", str(chunk), "--long-texts", "chunks", "--no-progress")
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err[-3000:]
    expected = pq.read_table(tmp_path / "whole.parquet")
    keys = list(zip(resumed["id"].to_pylist(), resumed["chunk"].to_pylist()))
    assert keys == list(zip(expected["id"].to_pylist(), expected["chunk"].to_pylist())) and len(set(keys)) == len(keys)
    assert resumed["start"].to_pylist() == expected["start"].to_pylist()
    assert sum(1 for ident, n in keys if n > 0) >= 12  # long texts were really split
    np.testing.assert_allclose(read_embeddings(out)[1], read_embeddings(tmp_path / "whole.parquet")[1], atol=1e-5)


# --- Ray Data on a local cluster ---------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_job(tmp_path_factory):
    """One local Ray run (2 CPUs, 2 actors, no dashboard) over a Parquet corpus with a bad row."""
    root = tmp_path_factory.mktemp("ray")
    texts = corpus(300, seed=2, longest=10)
    ids = [f"r{i}" for i in range(300)] + ["bad"]
    pq.write_table(pa.table({"id": ids, "text": texts + [""]}), root / "in.parquet", row_group_size=100)
    proc = run_cli(str(root / "in.parquet"), "--out", str(root / "ray-out"), "--model", DEMO_MODEL, "--ray",
                   "--ray-num-cpus", "2", "--ray-concurrency", "2", "--ray-cpus-per-actor", "0.5",
                   "--chunk-rows", "64")
    try:
        _, err = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return root, proc.returncode, err


def test_ray_gives_the_same_vectors_as_the_single_process_run(ray_job, minilm_dir):
    root, returncode, err = ray_job
    assert returncode == 0, err[-3000:]
    assert "e5: skipped id bad: text is empty or only whitespace" in err
    assert len(list((root / "ray-out").glob("*.parquet"))) > 1  # the work was spread over blocks
    encoder = load_encoder(get_spec(DEMO_MODEL), minilm_dir, quantize="none")
    embed_file(EmbeddingService(encoder), root / "in.parquet", root / "single.parquet", progress=False,
               report=lambda _: None)
    ray_ids, ray_vectors = read_embeddings(root / "ray-out")
    ids, vectors = read_embeddings(root / "single.parquet")
    assert sorted(ray_ids) == sorted(ids) and len(set(ray_ids)) == 300
    order = {ident: i for i, ident in enumerate(ids)}
    np.testing.assert_allclose(ray_vectors, vectors[[order[i] for i in ray_ids]], atol=1e-6)
