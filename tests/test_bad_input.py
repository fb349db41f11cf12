"""Bad input, clear error, nothing lost: records, pairs and instruction files, strict and lenient.

Real files under tmp_path; the ``srt-train check-records`` command runs as a subprocess, so what is
checked is what a user sees (one ``Error:`` line, exit status 2, no traceback).
"""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from srt.config import InstructionSource
from srt.errors import ConfigError, RecordError, SrtError
from srt.pipeline.feedback import CriticCall
from srt.pipeline.instructions import load_instructions
from srt.records import (
    MAX_JSON_DEPTH,
    FeedbackRecord,
    InstructionRecord,
    JsonLineError,
    JsonlReader,
    JsonlWriter,
    PreferencePair,
    decode_json_line,
    ensure_writable_dir,
    existing_ids,
    read_jsonl,
)


def rec(id="a", **kw) -> str:
    d = {"id": id, "instruction": "do it", "response": "done", "stage": 1}
    d.update(kw)
    return json.dumps(d, ensure_ascii=False)


def pair(id="p", **kw) -> str:
    d = {"id": id, "prompt": "q", "chosen": "good", "rejected": "bad"}
    d.update(kw)
    return json.dumps(d)


def write(path, *lines: str) -> None:
    """One line each, newline-terminated (``write_raw`` for exact bytes)."""
    with open(path, "wb") as f:
        for line in lines:
            f.write(line.encode() + b"\n")


def write_raw(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def rejects_of(path) -> list[dict]:
    with open(f"{path}.rejects.jsonl", encoding="utf-8") as f:  # must be valid UTF-8 itself
        return [json.loads(line) for line in f]


def check_records(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "srt.cli.train", "check-records", *args], capture_output=True, text=True, timeout=120
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def read_only_sys() -> bool:
    """/sys is a real directory no one may write to, root included, in containers."""
    try:
        with open("/sys/.srt-probe", "w"):
            pass
    except OSError:
        return True
    os.remove("/sys/.srt-probe")
    return False


def nested(depth: int) -> dict:
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return {"m": value}


# ---------------------------------------------------------------- duplicate ids


def test_duplicate_record_id_names_both_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, rec("a"), rec("b"), "", rec("a"))  # line 3 is blank
    with pytest.raises(RecordError) as exc:
        list(read_jsonl(path, FeedbackRecord))
    assert str(exc.value) == f"{path}:4: duplicate id 'a' (first at line 1)"


def test_duplicate_pair_id_lenient_keeps_first_and_rejects_second(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write(path, pair("p1"), pair("p2"), pair("p1", chosen="other"))
    reader = JsonlReader(path, PreferencePair, lenient=True)
    got = list(reader)
    assert [(p.id, p.chosen) for p in got] == [("p1", "good"), ("p2", "good")]
    assert (reader.read, reader.rejected) == (2, 1)
    (entry,) = rejects_of(path)
    assert entry["line"] == 3 and entry["reason"] == "duplicate id 'p1' (first at line 1)"
    assert json.loads(entry["raw"])["chosen"] == "other"  # the rejected line itself, nothing lost


def test_duplicate_check_is_per_model_and_can_be_overridden(tmp_path):
    # The critic-call log repeats ids by design (one critique and one score call per id).
    calls = tmp_path / "critic_calls.jsonl"
    write(calls, json.dumps({"id": "a", "mode": "critique"}), json.dumps({"id": "a", "mode": "score"}))
    assert [c.mode for c in read_jsonl(calls, CriticCall)] == ["critique", "score"]
    with pytest.raises(RecordError, match=r"critic_calls\.jsonl:2: duplicate id 'a' \(first at line 1\)"):
        list(read_jsonl(calls, CriticCall, unique_ids=True))
    path = tmp_path / "r.jsonl"
    write(path, rec("a"), rec("a"))
    assert len(list(read_jsonl(path, FeedbackRecord, unique_ids=False))) == 2
    assert existing_ids(path) == {"a"}  # a resume log may repeat ids


def test_duplicate_instruction_id_names_both_lines_strict_and_lenient(tmp_path):
    path = tmp_path / "q.jsonl"
    write(
        path,
        "",
        json.dumps({"q": "one", "uid": "x"}),
        json.dumps({"q": "two", "uid": "y"}),
        json.dumps({"q": "three", "uid": "x"}),
    )
    src = InstructionSource(path=str(path), fields={"instruction": "q", "id": "uid"})
    with pytest.raises(RecordError) as exc:
        load_instructions(src)
    assert str(exc.value) == f"{path}:4: duplicate id 'x' (first at line 2)"
    got = load_instructions(src, lenient=True)
    assert [(r.id, r.instruction) for r in got] == [("x", "one"), ("y", "two")]
    (entry,) = rejects_of(path)
    assert (entry["line"], entry["reason"]) == (4, "duplicate id 'x' (first at line 2)")
    assert json.loads(entry["raw"]) == {"q": "three", "uid": "x"}


# ---------------------------------------------------------------- deep nesting


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000, 200_000])  # 5000+: json.loads itself recurses out
def test_deeply_nested_json_is_a_line_error(tmp_path, depth):
    path = tmp_path / "r.jsonl"
    deep = "[" * depth + "]" * depth
    write(path, rec("a"), rec("b")[:-1] + f', "meta": {{"m": {deep}}}}}')
    with pytest.raises(RecordError) as exc:
        list(read_jsonl(path, FeedbackRecord))
    assert str(exc.value) == f"{path}:2: JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)"


def test_nesting_up_to_the_limit_is_accepted(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, rec("a", meta=nested(MAX_JSON_DEPTH - 2)))  # record + meta + lists = the limit
    (got,) = read_jsonl(path, FeedbackRecord)
    assert got.model_dump_json()  # and it can be written back
    write(path, rec("a", meta=nested(MAX_JSON_DEPTH - 1)))
    with pytest.raises(RecordError, match="nested too deeply"):
        list(read_jsonl(path, FeedbackRecord))


def test_deeply_nested_instruction_files(tmp_path):
    jsonl = tmp_path / "q.jsonl"
    write(
        jsonl, json.dumps({"instruction": "ok"}), '{"instruction": "x", "extra": ' + "[" * 10_000 + "]" * 10_000 + "}"
    )
    with pytest.raises(RecordError, match=rf"^{re.escape(str(jsonl))}:2: JSON nested too deeply"):
        load_instructions(InstructionSource(path=str(jsonl)))
    js = tmp_path / "q.json"
    js.write_text(json.dumps([{"instruction": "ok"}, {"instruction": "x", **nested(MAX_JSON_DEPTH)}]))
    with pytest.raises(RecordError, match=rf"^{re.escape(str(js))}: row 2: JSON nested too deeply"):
        load_instructions(InstructionSource(path=str(js)))
    js.write_text('[{"instruction": "x", "m": ' + "[" * 100_000 + "]" * 100_000 + "}]")
    with pytest.raises(RecordError, match=rf"^{re.escape(str(js))}: JSON nested too deeply$"):
        load_instructions(InstructionSource(path=str(js)))


# ---------------------------------------------------------------- text that is not valid Unicode


@pytest.mark.parametrize(
    "line, expected",
    [
        (rec(response="ok \\ud800"), "field 'response': text is not valid Unicode (lone surrogate \\ud800 at index 3)"),
        (
            rec(response="\\udfff end"),
            "field 'response': text is not valid Unicode (lone surrogate \\udfff at index 0)",
        ),
        (
            rec(feedback={"weaknesses": "w", "suggestions": "s", "raw": "x\\uDC00"}),
            "field 'feedback.raw': text is not valid Unicode (lone surrogate \\udc00 at index 1)",
        ),
        (
            rec(meta={"tags": ["fine", "bad \\ud83d"]}),
            "field 'meta.tags.1': text is not valid Unicode (lone surrogate \\ud83d at index 4)",
        ),
        (
            rec(meta={"k\\ud800": 1}),
            "field 'meta': key 'k\\ud800' is not valid Unicode (lone surrogate \\ud800 at index 1)",
        ),
        # A low surrogate before its high one is no pair.
        (
            rec(response="\\ude00\\ud83d"),
            "field 'response': text is not valid Unicode (lone surrogate \\ude00 at index 0)",
        ),
    ],
)
def test_lone_surrogates_are_line_errors_naming_the_field(tmp_path, line, expected):
    path = tmp_path / "r.jsonl"
    # json.dumps wrote the backslashes of our escapes as "\\\\": undo that so the file holds \ud800.
    write(path, rec("ok"), line.replace("\\\\u", "\\u"))
    with pytest.raises(RecordError) as exc:
        list(read_jsonl(path, FeedbackRecord))
    assert str(exc.value) == f"{path}:2: {expected}"

    reader = JsonlReader(path, FeedbackRecord, lenient=True)
    assert [r.id for r in reader] == ["ok"] and reader.rejected == 1
    (entry,) = rejects_of(path)
    assert entry["reason"] == expected and entry["raw"] == line.replace("\\\\u", "\\u")  # kept as written


def test_surrogate_pairs_and_escaped_backslashes_are_fine(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, rec("a", response="smile \\ud83d\\ude00").replace("\\\\u", "\\u"), rec("b", response="literal \\ud800"))
    a, b = read_jsonl(path, FeedbackRecord)
    assert a.response == "smile \U0001f600"
    assert b.response == "literal \\ud800"  # a backslash, then the letters: valid text


def test_lone_surrogates_in_instruction_files_never_reach_the_tokenizer(tmp_path):
    jsonl = tmp_path / "q.jsonl"
    write(jsonl, '{"prompt": "fine"}', '{"prompt": "what is \\ud800?"}')
    with pytest.raises(RecordError) as exc:
        load_instructions(InstructionSource(path=str(jsonl), fields={"instruction": "prompt"}))
    assert str(exc.value) == f"{jsonl}:2: field 'prompt': text is not valid Unicode (lone surrogate \\ud800 at index 8)"

    js = tmp_path / "q.json"
    js.write_text('[{"prompt": "fine"}, {"prompt": "ok", "gold": "\\udbff"}]')
    with pytest.raises(RecordError) as exc:
        load_instructions(InstructionSource(path=str(js), fields={"instruction": "prompt", "reference": "gold"}))
    assert str(exc.value) == f"{js}: row 2: field 'gold': text is not valid Unicode (lone surrogate \\udbff at index 0)"
    got = load_instructions(InstructionSource(path=str(js), fields={"instruction": "prompt"}), lenient=True)
    assert [r.instruction for r in got] == ["fine"]
    (entry,) = rejects_of(js)
    assert entry["row"] == 2 and "lone surrogate" in entry["reason"] and json.loads(entry["raw"])["gold"] == "\udbff"
    # Every instruction that got through can be encoded, as a tokenizer will.
    for r in load_instructions(InstructionSource(path=str(jsonl), fields={"instruction": "prompt"}), lenient=True):
        r.instruction.encode("utf-8")


def test_invalid_utf8_in_instruction_json_file_names_the_line(tmp_path):
    js = tmp_path / "q.json"
    data = b'[\n{"instruction": "ok"},\n{"instruction": "\xff"}\n]'
    write_raw(js, data)
    with pytest.raises(RecordError) as exc:
        load_instructions(InstructionSource(path=str(js)))
    bad_at = data.index(b"\xff")
    assert str(exc.value) == f"{js}:3: invalid UTF-8 at byte {bad_at}"
    js.write_text('[\n{"instruction": "ok"},\n{"instruction": oops}\n]')
    with pytest.raises(RecordError, match=rf"^{re.escape(str(js))}:3: invalid JSON: Expecting value at column 17$"):
        load_instructions(InstructionSource(path=str(js)))


def test_writer_refuses_text_that_is_not_valid_unicode(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonlWriter(path) as w:
        w.write({"id": "ok"})
        with pytest.raises(
            RecordError, match=r"out\.jsonl: cannot write a record: field 'text': text is not valid Unicode"
        ):
            w.write({"id": "x", "text": "a\ud800"})
        with pytest.raises(RecordError, match="field 'instruction': text is not valid Unicode"):
            w.write(InstructionRecord(id="y", instruction="b\udc00"))
    assert path.read_text() == '{"id": "ok"}\n'  # nothing half-written


# ---------------------------------------------------------------- the last line


def test_malformed_last_line_without_newline_is_an_error_not_a_skipped_tail(tmp_path, caplog):
    for tail, reason in [
        (b'{"id": 1} garbage', "invalid JSON: Extra data at column 11"),
        (b'{"a": bad}', "invalid JSON: Expecting value at column 7"),
        (b'{"id": "a"}{"id": "b"}', "invalid JSON: Extra data at column 12"),
        (b'{"id": "x\\q"', "invalid JSON: Invalid \\escape"),
        (b'\xff{"id": "a"', "invalid UTF-8 at byte 0"),
    ]:
        path = tmp_path / "r.jsonl"
        write_raw(path, rec("a").encode() + b"\n" + tail)
        with pytest.raises(RecordError) as exc:
            list(read_jsonl(path, FeedbackRecord))
        assert str(exc.value).startswith(f"{path}:2: {reason}"), (tail, str(exc.value))

        Path(f"{path}.rejects.jsonl").unlink(missing_ok=True)
        reader = JsonlReader(path, FeedbackRecord, lenient=True)
        assert [r.id for r in reader] == ["a"] and reader.rejected == 1 and not reader.truncated_tail
        (entry,) = rejects_of(path)
        assert entry["line"] == 2 and entry["reason"].startswith(reason)


def test_valid_json_last_line_failing_validation_is_an_error(tmp_path):
    # Complete JSON is data, newline or not: a schema error in it is reported, never skipped as a "crash".
    path = tmp_path / "r.jsonl"
    write_raw(path, rec("a").encode() + b"\n" + json.dumps({"id": "b", "stage": 1}).encode())
    with pytest.raises(RecordError, match=r"r\.jsonl:2: missing field 'instruction'"):
        list(read_jsonl(path, FeedbackRecord))


def test_interrupted_last_line_strict_skips_lenient_keeps_in_rejects(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    full = rec("b", response="résumé 中文")
    fragment = full.encode()[: len(full.encode()) - 12]
    write_raw(path, rec("a").encode() + b"\n" + fragment)
    reader = JsonlReader(path, FeedbackRecord)
    with caplog.at_level(logging.WARNING, logger="srt.records"):
        assert [r.id for r in reader] == ["a"]
    assert reader.truncated_tail and reader.rejected == 0
    assert "r.jsonl:2: skipping unterminated last line" in caplog.text
    assert not os.path.exists(f"{path}.rejects.jsonl")

    reader = JsonlReader(path, FeedbackRecord, lenient=True)
    assert [r.id for r in reader] == ["a"]
    assert reader.truncated_tail and reader.rejected == 1
    (entry,) = rejects_of(path)
    assert entry["line"] == 2 and entry["raw"] == fragment.decode()
    assert entry["reason"].startswith("unterminated last line (likely an interrupted write): invalid JSON")


def test_fragment_cut_inside_a_multibyte_character(tmp_path):
    path = tmp_path / "r.jsonl"
    line = rec("b", response="中文").encode()
    cut = line[: line.index("文".encode()) + 1]  # one byte of a three-byte character
    write_raw(path, rec("a").encode() + b"\n" + cut)
    reader = JsonlReader(path, FeedbackRecord)
    assert [r.id for r in reader] == ["a"] and reader.truncated_tail
    with JsonlWriter(path) as w:  # and the writer cuts it
        w.write(json.loads(rec("c")))
    assert [r.id for r in read_jsonl(path, FeedbackRecord)] == ["a", "c"]


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))  # valid Unicode only
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_text.filter(lambda t: len(t) <= 8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.dictionaries(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8), _json_values, min_size=1, max_size=4
    ),
    ensure_ascii=st.booleans(),
    data=st.data(),
)
def test_property_every_cut_of_a_written_line_is_a_fragment(value, ensure_ascii, data):
    line = json.dumps(value, ensure_ascii=ensure_ascii).encode()
    cut = data.draw(st.integers(min_value=1, max_value=len(line) - 1))
    with pytest.raises(JsonLineError) as exc:
        decode_json_line(line[:cut])
    assert exc.value.fragment, (line[:cut], exc.value.reason)
    assert decode_json_line(line) == value
    for garbage in (b" x", b"}", b",", b' {"a": 1}'):
        with pytest.raises(JsonLineError) as exc:
            decode_json_line(line + garbage)
        assert not exc.value.fragment, line + garbage


def test_writer_appends_after_a_complete_last_line_without_newline(tmp_path, caplog):
    path = tmp_path / "hand.jsonl"
    write_raw(path, (rec("a") + "\n" + rec("b")).encode())  # hand-written, no final newline
    with caplog.at_level(logging.WARNING, logger="srt.records"):
        with JsonlWriter(path) as w:
            w.write(json.loads(rec("c")))
    assert "removed" not in caplog.text
    assert [r.id for r in read_jsonl(path, FeedbackRecord)] == ["a", "b", "c"]
    assert path.read_bytes().count(b"\n") == 3


def test_writer_keeps_a_malformed_tail_that_is_no_fragment(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    write_raw(path, rec("a").encode() + b'\n{"id": "b"} garbage')
    with caplog.at_level(logging.WARNING, logger="srt.records"):
        with JsonlWriter(path) as w:
            w.write(json.loads(rec("c")))
    assert "kept it and added the newline" in caplog.text
    assert path.read_bytes().splitlines()[1] == b'{"id": "b"} garbage'  # nothing lost
    with pytest.raises(RecordError, match=r"r\.jsonl:2: invalid JSON: Extra data"):
        list(read_jsonl(path, FeedbackRecord))  # and a strict read says where it is


def test_existing_ids_tail_rules(tmp_path):
    path = tmp_path / "out.jsonl"
    write_raw(path, b'{"id": "a"}\n{"id": "b"')
    assert existing_ids(path) == {"a"}  # interrupted write: ignored
    write_raw(path, b'{"id": "a"}\n{"id": "b"}')
    assert existing_ids(path) == {"a", "b"}  # complete, just no newline
    write_raw(path, b'{"id": "a"}\n{"id": "b"} x')
    with pytest.raises(RecordError, match=r"out\.jsonl:2: invalid JSON: Extra data"):
        existing_ids(path)
    write_raw(path, b'{"id": "a\\ud800"}\n')
    with pytest.raises(RecordError, match=r"out\.jsonl:1: field 'id': text is not valid Unicode"):
        existing_ids(path)


# ---------------------------------------------------------------- empty files


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file (no records)"),
        (b"\n  \n\t\r\n", "empty file (no records)"),
        (b'{"id": "a", "instr', "no records (only an unterminated last line, likely an interrupted write)"),
    ],
)
def test_empty_records_file_is_an_error_naming_it_when_records_are_required(tmp_path, content, message):
    path = tmp_path / "records.jsonl"
    write_raw(path, content)
    with pytest.raises(RecordError) as exc:
        list(read_jsonl(path, FeedbackRecord, allow_empty=False))
    assert str(exc.value) == f"{path}: {message}"
    assert list(read_jsonl(path, FeedbackRecord)) == []  # the default suits resume files


def test_all_lines_rejected_is_no_valid_records(tmp_path):
    path = tmp_path / "records.jsonl"
    write(path, "nope", rec("a", stage=9))
    with pytest.raises(RecordError) as exc:
        list(read_jsonl(path, FeedbackRecord, lenient=True, allow_empty=False))
    assert str(exc.value) == f"{path}: no valid records (2 rejected, see {path}.rejects.jsonl)"
    assert len(rejects_of(path)) == 2


@pytest.mark.parametrize("name, content", [("q.jsonl", ""), ("q.jsonl", "\n\n   \n"), ("q.json", "[]")])
def test_empty_instruction_file_is_an_error_naming_it(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(RecordError, match=rf"^{path}: empty"):
        load_instructions(InstructionSource(path=str(path)))


def test_offset_counts_rows_not_lines_and_past_the_end_is_a_config_error(tmp_path):
    path = tmp_path / "q.jsonl"
    write(
        path,
        "",
        json.dumps({"instruction": "a"}),
        "",
        json.dumps({"instruction": "b"}),
        json.dumps({"instruction": "c"}),
    )
    assert [r.instruction for r in load_instructions(InstructionSource(path=str(path), offset=1, limit=1))] == ["b"]
    with pytest.raises(ConfigError, match="no instructions read"):
        load_instructions(InstructionSource(path=str(path), offset=3))


# ---------------------------------------------------------------- srt-train check-records


def test_check_records_strict_errors_are_one_line(tmp_path):
    path = tmp_path / "r.jsonl"
    cases = [
        ([rec("a"), rec("b"), rec("a")], ":3: duplicate id 'a' (first at line 1)"),
        (
            [rec("a"), '{"id": "b", "x": ' + "[" * 50_000 + "]" * 50_000 + "}"],
            f":2: JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)",
        ),
        (
            [rec("a", response="\\ud800").replace("\\\\u", "\\u")],
            ":1: field 'response': text is not valid Unicode (lone surrogate \\ud800 at index 0)",
        ),
    ]
    for lines, expected in cases:
        write(path, *lines)
        assert one_error_line(check_records(str(path))) == f"Error: {path}{expected}"
    write_raw(path, rec("a").encode() + b'\n{"id": 1} garbage')
    assert one_error_line(check_records(str(path))) == f"Error: {path}:2: invalid JSON: Extra data at column 11"
    pairs = tmp_path / "pairs.jsonl"
    write(pairs, pair("p"), pair("p"))
    assert (
        one_error_line(check_records(str(pairs), "--kind", "pair"))
        == f"Error: {pairs}:2: duplicate id 'p' (first at line 1)"
    )


def test_check_records_lenient_counts_and_rejects_file(tmp_path):
    path = tmp_path / "r.jsonl"
    data = "\n".join([rec("a"), rec("a"), rec("b", response="\\udc00").replace("\\\\u", "\\u"), rec("c")]) + "\n"
    write_raw(path, data.encode() + rec("d").encode()[:20])  # + an interrupted write
    rejects = tmp_path / "rej.jsonl"
    proc = check_records(str(path), "--lenient", "--rejects", str(rejects))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"{path}: 2 valid feedback records, 3 rejected (see {rejects}), unterminated last line skipped"
    )
    entries = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert [(e["line"], e["reason"].split(" (")[0]) for e in entries] == [
        (2, "duplicate id 'a'"),
        (3, "field 'response': text is not valid Unicode"),
        (5, "unterminated last line"),
    ]
    assert entries[2]["raw"] == rec("d")[:20]

    proc = check_records(str(path))  # strict: the duplicate stops it; the tail alone would only warn
    assert one_error_line(proc) == f"Error: {path}:2: duplicate id 'a' (first at line 1)"
    write_raw(path, rec("a").encode() + b"\n" + rec("b").encode()[:20])
    proc = check_records(str(path))
    assert (
        proc.returncode == 0 and "1 valid feedback records, 0 rejected, unterminated last line skipped" in proc.stdout
    )
    assert "r.jsonl:2: skipping unterminated last line" in proc.stderr


def test_check_records_unwritable_rejects_file_is_one_error_line(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, rec("a"), "oops")
    if not read_only_sys():
        pytest.skip("/sys is writable here")
    proc = check_records(str(path), "--lenient", "--rejects", "/sys/srt-rejects.jsonl")
    assert one_error_line(proc).startswith("Error: /sys/srt-rejects.jsonl: cannot write the rejects file (")


# ---------------------------------------------------------------- output directories


def test_output_dir_that_is_a_file_or_under_a_file(tmp_path):
    f = tmp_path / "run"
    f.write_text("x")
    with pytest.raises(ConfigError) as exc:
        ensure_writable_dir(f)
    assert str(exc.value) == f"output directory {f} is a file, not a directory"
    with pytest.raises(ConfigError) as exc:
        ensure_writable_dir(f / "stage1", "stage directory")
    assert str(exc.value) == f"cannot create stage directory {f / 'stage1'}: {f} is a file, not a directory"
    assert isinstance(exc.value, SrtError) and "\n" not in str(exc.value)


def test_output_dir_created_and_left_clean(tmp_path):
    out = ensure_writable_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []
    assert ensure_writable_dir(out) == out  # an existing directory is fine


def test_output_dir_not_writable_sysfs():
    if not read_only_sys():
        pytest.skip("/sys is writable here")
    with pytest.raises(ConfigError, match=r"^output directory /sys is not writable \(.+\)$"):
        ensure_writable_dir("/sys")
    with pytest.raises(ConfigError, match=r"^cannot create output directory /sys/srt-out: .+$"):
        ensure_writable_dir("/sys/srt-out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_output_dir_not_writable_permissions(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=rf"^output directory {ro} is not writable \(Permission denied\)$"):
            ensure_writable_dir(ro)
        with pytest.raises(ConfigError, match=rf"^cannot create output directory {ro / 'x'}: Permission denied$"):
            ensure_writable_dir(ro / "x")
    finally:
        ro.chmod(0o700)


def test_output_dir_error_is_one_error_line_from_a_cli(tmp_path):
    f = tmp_path / "run"
    f.write_text("x")
    code = (
        "import click, sys\nfrom srt.cli.common import run_cli\nfrom srt.records import ensure_writable_dir\n"
        "out = sys.argv.pop()\n@click.group()\ndef g(): pass\n@g.command()\ndef go(): ensure_writable_dir(out)\n"
        "sys.argv[1:] = ['go']\nrun_cli(g)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, timeout=60)
    assert one_error_line(proc) == f"Error: output directory {f} is a file, not a directory"
