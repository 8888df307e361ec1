"""data/prepare.py: the split of tiny Shakespeare and clear errors for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT

from data import prepare as prep


def test_tiny_shakespeare_split_counts(shakespeare_path, tmp_path):
    """The numbers the course and the design card state, from the command a user runs."""
    out = subprocess.run(
        [sys.executable, "data/prepare.py", "--input", str(shakespeare_path), "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "1,115,394 characters, vocabulary of 65" in out
    assert "train: 1,003,854 tokens, val: 111,540 tokens" in out
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert (meta["num_chars"], meta["vocab_size"], meta["train_tokens"], meta["val_tokens"]) == (
        1115394,
        65,
        1003854,
        111540,
    )
    text = shakespeare_path.read_text()
    train, val = prep.load_split(tmp_path, "train"), prep.load_split(tmp_path, "val")
    assert len(train) == 1003854 and len(val) == 111540
    decode = lambda ids: "".join(meta["vocab"][i] for i in ids)
    assert decode(train[:200]) == text[:200]  # first 90% trains ...
    assert decode(val[-200:]) == text[-200:]  # ... the last 10% validates
    assert decode(val[:50]) == text[1003854 : 1003854 + 50]
    # recognised by its sha256 whatever the file is called (the model card links the data set); others keep their name
    assert meta["name"] == "tiny_shakespeare"
    assert prep.prepare(text, tmp_path / "renamed", name="shakespeare")["name"] == "tiny_shakespeare"
    assert prep.prepare(text[:5000], tmp_path / "part", name="shakespeare")["name"] == "shakespeare"


def test_large_vocabulary_uses_uint32(tmp_path):
    text = "".join(chr(0x10000 + i) for i in range(70000)) * 2
    meta = prep.prepare(text, tmp_path)
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70000
    assert prep.load_split(tmp_path, "val").max() < 70000


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "is empty"),
        (b"too short", "only 9 characters"),
        (b"caf\xe9 " * 100, "not UTF-8 text.*iconv"),
    ],
)
def test_bad_input_text(tmp_path, content, match):
    path = tmp_path / "in.txt"
    path.write_bytes(content)
    with pytest.raises(prep.DataError, match=match):
        prep.read_text(path)
    proc = subprocess.run(
        [sys.executable, "data/prepare.py", "--input", str(path), "--out-dir", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "error:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_file_without_network_says_where_to_put_it(tmp_path, monkeypatch):
    def offline(url, dest):
        raise OSError("no network")

    monkeypatch.setattr(prep.urllib.request, "urlretrieve", offline)
    with pytest.raises(prep.DataError, match=r"save it as .*input.txt") as e:
        prep.download_shakespeare(tmp_path / "input.txt")
    assert prep.SHAKESPEARE_URL in str(e.value)
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_download_is_checked_against_sha256(tmp_path, monkeypatch):
    monkeypatch.setattr(prep.urllib.request, "urlretrieve", lambda url, dest: dest.write_text("not shakespeare"))
    with pytest.raises(prep.DataError, match="sha256"):
        prep.download_shakespeare(tmp_path / "input.txt")
    assert not (tmp_path / "input.txt").exists()


def test_missing_prepared_data_names_the_command(tmp_path):
    with pytest.raises(prep.DataError, match="python data/prepare.py"):
        prep.load_meta(tmp_path)
    prep.prepare("abc" * 100, tmp_path)
    (tmp_path / "val.bin").write_bytes(b"")
    with pytest.raises(prep.DataError, match="val.bin is missing or empty"):
        prep.load_split(tmp_path, "val")
    assert np.array_equal(prep.load_split(tmp_path, "train")[:3], [0, 1, 2])


@pytest.mark.slow
def test_windows_line_endings_are_converted_and_said_so(shakespeare_text, tmp_path):
    """A CRLF file: its \r\n are read as \n (the model learns one newline), and the output says how many and
    how that changes the count, instead of reporting fewer characters than the file has without a word."""
    lines = shakespeare_text[:300_000].split("\n")
    path = tmp_path / "crlf.txt"
    path.write_bytes("\r\n".join(lines).encode() + b"\rend")  # and one old Mac line ending
    crlf = len(lines) - 1
    proc = subprocess.run(
        [sys.executable, "data/prepare.py", "--input", str(path), "--out-dir", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    prepared = 300_000 + 1 + len("end")
    assert (
        f"note: {crlf + 1:,} line endings of {path} were converted to \\n ({crlf:,} \\r\\n, 1 lone \\r): "
        f"its {prepared + crlf:,} characters are prepared as {prepared:,}"
    ) in proc.stdout
    assert (
        f"{prepared:,} characters" in proc.stdout
        and "\r" not in json.loads((tmp_path / "out" / "meta.json").read_text())["vocab"]
    )
    help_text = subprocess.run(
        [sys.executable, "data/prepare.py", "--help"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert "line endings are read as \\n" in " ".join(help_text.split())
