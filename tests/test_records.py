import json
import logging
import os
import threading

import pytest

from srt.errors import RecordError, SrtError
from srt.io import file_sha256
from srt.records import (
    SCHEMA_VERSION,
    CriticInfo,
    Feedback,
    FeedbackRecord,
    InstructionRecord,
    JsonlReader,
    JsonlWriter,
    PreferencePair,
    existing_ids,
    read_jsonl,
    write_jsonl_atomic,
)


def make_record(i: int, **kw) -> FeedbackRecord:
    fields = dict(
        id=f"r{i}",
        instruction=f"instruction {i}",
        response=f"response {i}",
        feedback=Feedback(weaknesses="w", suggestions="s", score=4, raw="Weaknesses:\nw"),
        refinement=f"better {i}",
        refinement_score=7,
        critic=CriticInfo(name="api", model="gpt", template_version="v1", template_hash="abc"),
        stage=1,
    )
    fields.update(kw)
    return FeedbackRecord(**fields)


def good_dict(**kw) -> dict:
    d = {"id": "a", "instruction": "do it", "response": "done", "stage": 1}
    d.update(kw)
    return d


def write_lines(path, lines: list[bytes | str]) -> None:
    with open(path, "wb") as f:
        for line in lines:
            f.write(line.encode() if isinstance(line, str) else line)


# ---------------------------------------------------------------- schema


def test_record_roundtrip_and_schema_version(tmp_path):
    rec = make_record(1, meta={"lang": "zh", "nested": {"k": [1, 2]}}, reference="42")
    path = tmp_path / "r.jsonl"
    with JsonlWriter(path) as w:
        w.write(rec)
    line = path.read_text(encoding="utf-8")
    assert json.loads(line)["schema_version"] == SCHEMA_VERSION == 1
    assert list(read_jsonl(path, FeedbackRecord)) == [rec]


def test_preference_pair_and_instruction_defaults():
    pair = PreferencePair(id="p", prompt="q", chosen="good", rejected="bad", chosen_score=8, rejected_score=3)
    assert (pair.stage, pair.round, pair.schema_version, pair.meta) == (2, 0, 1, {})
    inst = InstructionRecord(id="i", instruction="hi")
    assert inst.reference is None and inst.meta == {}


@pytest.mark.parametrize(
    "line, expected",
    [
        (json.dumps(good_dict(instruction="   ")), "instruction: must not be empty"),
        (json.dumps({"id": "a", "instruction": "x", "stage": 1}), "missing field 'response'"),
        (json.dumps(good_dict(stage=3)), "stage: "),
        (json.dumps(good_dict(response=5)), "response: Input should be a valid string (got 5)"),
        (
            json.dumps(good_dict(refinement_score=11)),
            "refinement_score: Input should be less than or equal to 10",
        ),
        (
            json.dumps(good_dict(refinement_score=0)),
            "refinement_score: Input should be greater than or equal to 1",
        ),
        (json.dumps(good_dict(refinement_score=True)), "refinement_score: "),
        (
            json.dumps(good_dict(feedback={"weaknesses": "w", "suggestions": "s", "score": -1, "raw": ""})),
            "feedback.score: ",
        ),
        (
            json.dumps(good_dict(feedback={"weaknesses": "w", "suggestions": "s", "raw": "", "x": 1})),
            "feedback.x: unknown key (typo?)",
        ),
        (json.dumps(good_dict(instrucion="typo")), "instrucion: unknown key (typo?; allowed: schema_version, id"),
        (json.dumps(good_dict(schema_version=2)), "schema_version 2 is newer than this srt supports (1); upgrade srt"),
        ('{"id": "a", "instruction": ', "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        (b'{"id": "a\xff\xfe"}', "invalid UTF-8 at byte 9"),
    ],
)
def test_strict_errors_name_file_line_and_problem(tmp_path, line, expected):
    path = tmp_path / "data.jsonl"
    ok = json.dumps(good_dict())
    bad = line.encode() if isinstance(line, str) else line
    write_lines(path, [ok + "\n", "\n", bad + b"\n", ok + "\n"])
    with pytest.raises(RecordError) as exc:
        list(read_jsonl(path, FeedbackRecord))
    msg = str(exc.value)
    assert msg.startswith(f"{path}:3: "), msg
    assert expected in msg
    assert "\n" not in msg
    assert isinstance(exc.value, SrtError)


def test_missing_file_is_record_error(tmp_path):
    with pytest.raises(RecordError, match="file not found"):
        list(read_jsonl(tmp_path / "nope.jsonl", FeedbackRecord))


def test_blank_lines_skipped_and_crlf_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    write_lines(
        path, ["\n", json.dumps(good_dict(id="1")) + "\r\n", "   \n", json.dumps(good_dict(id="2")) + "\n", "\n"]
    )
    assert [r.id for r in read_jsonl(path, FeedbackRecord)] == ["1", "2"]


def test_complete_last_line_without_newline_is_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    write_lines(path, [json.dumps(good_dict(id="1")) + "\n", json.dumps(good_dict(id="2"))])
    reader = JsonlReader(path, FeedbackRecord)
    assert [r.id for r in reader] == ["1", "2"]
    assert reader.truncated_tail is False


def test_partial_last_line_is_skipped_with_warning(tmp_path, caplog):
    path = tmp_path / "d.jsonl"
    full = json.dumps(good_dict(id="2"))
    write_lines(path, [json.dumps(good_dict(id="1")) + "\n", full[: len(full) // 2]])
    reader = JsonlReader(path, FeedbackRecord)
    with caplog.at_level(logging.WARNING, logger="srt.records"):
        assert [r.id for r in reader] == ["1"]
    assert reader.truncated_tail is True
    assert "d.jsonl:2: skipping unterminated last line" in caplog.text


def test_bad_line_with_newline_in_middle_is_an_error_even_if_truncated_looking(tmp_path):
    # Only an unterminated *last* line counts as an interrupted write.
    path = tmp_path / "d.jsonl"
    full = json.dumps(good_dict(id="2"))
    write_lines(path, [full[:10] + "\n", full + "\n"])
    with pytest.raises(RecordError, match=r"d\.jsonl:1: invalid JSON"):
        list(read_jsonl(path, FeedbackRecord))


def test_lenient_mode_writes_rejects_and_counts(tmp_path):
    path = tmp_path / "d.jsonl"
    write_lines(
        path,
        [
            json.dumps(good_dict(id="1")) + "\n",
            "not json\n",
            b'{"bad": "\xff"}\n',
            json.dumps(good_dict(id="3", refinement_score=99)) + "\n",
            json.dumps(good_dict(id="4")) + "\n",
        ],
    )
    reader = JsonlReader(path, FeedbackRecord, lenient=True)
    assert [r.id for r in reader] == ["1", "4"]
    assert (reader.read, reader.rejected) == (2, 3)
    rejects = [json.loads(line) for line in open(f"{path}.rejects.jsonl", encoding="utf-8")]
    assert [r["line"] for r in rejects] == [2, 3, 4]
    assert all(r["file"] == str(path) for r in rejects)
    assert rejects[0]["raw"] == "not json" and rejects[0]["reason"].startswith("invalid JSON")
    assert rejects[1]["raw"] == '{"bad": "\ufffd"}' and rejects[1]["reason"] == "invalid UTF-8 at byte 9"
    assert "refinement_score" in rejects[2]["reason"] and json.loads(rejects[2]["raw"])["id"] == "3"


def test_lenient_custom_rejects_path(tmp_path):
    path = tmp_path / "d.jsonl"
    write_lines(path, ["{}\n"])
    rejects = tmp_path / "sub" / "rej.jsonl"
    assert list(read_jsonl(path, InstructionRecord, lenient=True, rejects_path=rejects)) == []
    (entry,) = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert "missing field 'id'" in entry["reason"] and "missing field 'instruction'" in entry["reason"]


def test_reader_is_lazy(tmp_path):
    # A later broken line must not stop the first record from being yielded.
    path = tmp_path / "d.jsonl"
    write_lines(path, [json.dumps(good_dict(id="1")) + "\n", "garbage\n"])
    it = read_jsonl(path, FeedbackRecord)
    assert next(it).id == "1"
    with pytest.raises(RecordError, match=":2: invalid JSON"):
        next(it)


def test_reader_streams_from_a_pipe(tmp_path):
    """The reader yields the first record while the writer has not finished the file: it never
    reads the whole file first (a FIFO blocks any read-to-EOF until the writer closes)."""
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    got_first = threading.Event()

    def producer():
        with open(fifo, "w") as f:
            f.write(json.dumps(good_dict(id="1")) + "\n")
            f.flush()
            got_first.wait(timeout=10)
            f.write(json.dumps(good_dict(id="2")) + "\n")

    t = threading.Thread(target=producer)
    t.start()
    it = read_jsonl(fifo, FeedbackRecord)
    assert next(it).id == "1"
    got_first.set()
    assert [r.id for r in it] == ["2"]
    t.join(timeout=10)


def test_reader_memory_is_bounded_on_a_big_file(tmp_path):
    import tracemalloc

    path = tmp_path / "big.jsonl"
    with open(path, "wb") as f:  # ~5 MB; distinct ids (the duplicate check keeps one small entry per id)
        for i in range(5000):
            f.write((json.dumps(good_dict(id=f"r{i}", response="x" * 1000)) + "\n").encode())
    tracemalloc.start()
    n = sum(1 for _ in read_jsonl(path, FeedbackRecord))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 5000
    assert peak < 1_000_000, peak


# ---------------------------------------------------------------- writer


def test_writer_recovers_from_partial_tail(tmp_path, caplog):
    path = tmp_path / "out.jsonl"
    with JsonlWriter(path) as w:
        for i in range(3):
            w.write(make_record(i))
    # Simulate a crash in the middle of writing record 3.
    partial = make_record(3).model_dump_json()[:25].encode()
    with open(path, "ab") as f:
        f.write(partial)
    assert existing_ids(path) == {"r0", "r1", "r2"}

    with caplog.at_level(logging.WARNING, logger="srt.records"):
        with JsonlWriter(path) as w:
            w.write(make_record(3))
            w.write(make_record(4))
    assert f"removed an unterminated last line ({len(partial)} bytes)" in caplog.text
    reader = JsonlReader(path, FeedbackRecord)
    assert [r.id for r in reader] == ["r0", "r1", "r2", "r3", "r4"]
    assert reader.truncated_tail is False
    assert path.read_bytes().endswith(b"\n")


def test_writer_partial_only_line_and_long_tail(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id": "half')  # a single interrupted line, no newline at all
    with JsonlWriter(path) as w:
        w.write({"id": "x"})
    assert path.read_text() == '{"id": "x"}\n'

    path2 = tmp_path / "out2.jsonl"
    path2.write_bytes(b'{"id": "ok"}\n{"id": "' + b"y" * 200_000)  # a fragment longer than the scan block
    JsonlWriter(path2).close()
    assert path2.read_bytes() == b'{"id": "ok"}\n'


def test_shared_writer_waits_for_a_line_another_process_is_writing(tmp_path):
    """Runs sharing a generation cache append to one file: a line another writer is half-way through is not cut
    as a crash's fragment (the unshared writer would cut it), and every line ends up whole."""
    import fcntl

    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "a"}\n')
    other = open(path, "ab")  # another process's writer, mid-line, holding the lock as a shared writer does
    fcntl.flock(other.fileno(), fcntl.LOCK_EX)
    other.write(b'{"key": ')
    other.flush()
    opened = threading.Event()

    def second_writer() -> None:
        with JsonlWriter(path, shared=True) as w:
            opened.set()
            w.write({"key": "c"})

    thread = threading.Thread(target=second_writer)
    thread.start()
    assert not opened.wait(0.5)  # it waits for the lock instead of repairing the tail under the other writer
    other.write(b'"b"}\n')
    other.flush()
    fcntl.flock(other.fileno(), fcntl.LOCK_UN)
    other.close()
    thread.join(10)
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="appends"):
        JsonlWriter(path, mode="w", shared=True)


def test_writer_modes_dicts_unicode_and_one_line_per_record(tmp_path):
    path = tmp_path / "a" / "b.jsonl"  # parent dirs are created
    with JsonlWriter(path, fsync_every=1) as w:
        w.write({"id": "1", "text": "line1\nline2 \u2028 中文 مرحبا 🎉"})
    with JsonlWriter(path) as w:
        w.write({"id": "2"})
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert json.loads(lines[0])["text"] == "line1\nline2 \u2028 中文 مرحبا 🎉"
    assert "中文".encode() in lines[0]  # written as UTF-8, not escaped
    with JsonlWriter(path, mode="w") as w:
        assert w.written == 0
        w.write({"id": "3"})
    assert existing_ids(path) == {"3"}
    with pytest.raises(ValueError):
        JsonlWriter(path, mode="r")
    with pytest.raises(ValueError):
        with JsonlWriter(path) as w:
            w.write({"x": float("nan")})


def test_existing_ids_missing_file_and_corruption(tmp_path):
    assert existing_ids(tmp_path / "none.jsonl") == set()
    path = tmp_path / "d.jsonl"
    write_lines(path, ['{"id": "a"}\n', "garbage\n", '{"id": "b"}\n'])
    with pytest.raises(RecordError, match=r"d\.jsonl:2:"):
        existing_ids(path)
    write_lines(path, ['{"id": 3}\n'])
    with pytest.raises(RecordError, match="string 'id'"):
        existing_ids(path)


def test_write_jsonl_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("old content that is not json\n")
    pairs = [PreferencePair(id=f"p{i}", prompt="q", chosen="c", rejected="r") for i in range(3)]
    assert write_jsonl_atomic(path, pairs) == 3
    assert list(read_jsonl(path, PreferencePair)) == pairs
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]  # no temp file left

    def exploding():
        yield pairs[0]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, exploding())
    assert list(read_jsonl(path, PreferencePair)) == pairs  # old file untouched
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]


def test_file_sha256(tmp_path):
    import hashlib

    path = tmp_path / "f.bin"
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
