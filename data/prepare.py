"""Prepare a text for character-level training: vocabulary, token ids, 90/10 split.

    python data/prepare.py                                   # tiny Shakespeare -> data/
    python data/prepare.py --input my.txt --out-dir data/my  # any UTF-8 text

Reads data/input.txt (downloading tiny Shakespeare from the char-rnn repository when it is
absent, and checking its sha256), or the UTF-8 file given with --input. Writes into --out-dir:
train.bin and val.bin (token ids, little-endian uint16, or uint32 for vocabularies over
65,535 characters) and meta.json (the vocabulary, the dtype and the counts). Line endings are read
as "\n": a Windows "\r\n" (or an old Mac "\r") becomes one "\n", and the output says how many did.
"""

import argparse
import hashlib
import json
import os
import sys
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
MIN_CHARS = 100  # shorter texts leave too little to split into train and validation batches


class DataError(ValueError):
    """Input text that cannot be prepared; the message says what to do."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download_shakespeare(dest: Path) -> None:
    """Download tiny Shakespeare to dest (atomically) and verify its checksum."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    print(f"downloading {SHAKESPEARE_URL} -> {dest}")
    try:
        urllib.request.urlretrieve(SHAKESPEARE_URL, tmp)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"{dest} does not exist and the download failed ({e}). Download {SHAKESPEARE_URL} "
            f"yourself and save it as {dest}, or pass --input PATH to use another text."
        ) from e
    digest = sha256(tmp)
    if digest != SHAKESPEARE_SHA256:
        tmp.unlink()
        raise DataError(f"downloaded file has sha256 {digest}, expected {SHAKESPEARE_SHA256}; try again")
    os.replace(tmp, dest)


def read_text(path: Path) -> tuple[str, int]:
    """The text of `path` with every line ending as "\n", and how many line endings ("\r\n" or a lone "\r")
    were converted: the model then learns one newline character, whatever system wrote the file."""
    if not path.is_file():
        raise DataError(f"no input text at {path}: pass --input PATH to a UTF-8 text file")
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text ({e.reason} at byte {e.start}). Convert it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8.txt`."
        ) from e
    converted = raw.count("\r")  # each "\r\n" and each lone "\r" becomes one "\n"
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    if len(text) < MIN_CHARS:
        what = "empty" if not text else f"only {len(text)} characters long"
        raise DataError(f"{path} is {what}; a text of at least {MIN_CHARS} characters is needed")
    return text, converted


def split(n: int, train_fraction: float = 0.9) -> int:
    """Index where validation starts: the first 90% trains, the last 10% validates."""
    return int(n * train_fraction)


def prepare(text: str, out_dir: Path, name: str | None = None) -> dict:
    """Encode `text` by character, split it 90/10 and write train.bin, val.bin, meta.json.
    `name` names the data set (default "text"); tiny Shakespeare, recognised by its sha256, is always
    "tiny_shakespeare", whatever its file was called, so the model card can say what it is."""
    vocab = "".join(sorted(set(text)))
    stoi = {ch: i for i, ch in enumerate(vocab)}
    dtype = np.uint16 if len(vocab) <= 2**16 else np.uint32
    ids = np.fromiter((stoi[ch] for ch in text), dtype=dtype, count=len(text))
    n = split(len(ids))
    check_writable(out_dir)
    if hashlib.sha256(text.encode()).hexdigest() == SHAKESPEARE_SHA256:
        name = "tiny_shakespeare"
    name = name or "text"
    meta = {
        "name": name,
        "vocab": vocab,
        "vocab_size": len(vocab),
        "dtype": np.dtype(dtype).name,
        "num_chars": len(text),
        "train_tokens": n,
        "val_tokens": len(ids) - n,
    }
    for name, part in (("train.bin", ids[:n]), ("val.bin", ids[n:])):  # meta.json's counts check these on load
        tmp = out_dir / (name + ".tmp")
        part.astype(np.dtype(dtype).newbyteorder("<")).tofile(tmp)
        os.replace(tmp, out_dir / name)
    (out_dir / "meta.json.tmp").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(out_dir / "meta.json.tmp", out_dir / "meta.json")  # last: its presence means the rest is complete
    return meta


def check_writable(out_dir: Path) -> None:
    """Create out_dir, or say in one line why it cannot be (a file in the way, no permission)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out-dir {out_dir} is a file, not a folder: choose another --out-dir")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"cannot write to --out-dir {out_dir} ({e.strerror}): choose a folder you can write to") from e


def load_meta(data_dir: Path) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"no prepared data in {data_dir} (meta.json missing). Run `python data/prepare.py` first.")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        np.dtype(meta["dtype"]), int(meta["vocab_size"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"{path} is damaged ({type(e).__name__}: {e}). Run `python data/prepare.py --out-dir {data_dir}` again."
        ) from None
    return meta


def load_split(data_dir: Path, name: str) -> np.ndarray:
    """Memory-map train.bin or val.bin of a prepared folder, checking that it belongs with meta.json:
    the token count meta.json recorded, and no id outside its vocabulary."""
    meta = load_meta(data_dir)
    path = Path(data_dir) / f"{name}.bin"
    if not path.is_file() or path.stat().st_size == 0:
        raise DataError(f"{path} is missing or empty. Run `python data/prepare.py` again.")
    again = f"Prepare the folder again from one text: `python data/prepare.py --input TEXT --out-dir {data_dir}`."
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    size, expected = path.stat().st_size, meta.get(f"{name}_tokens")
    if size % dtype.itemsize:
        raise DataError(f"{path} has {size:,} bytes, not a whole number of {meta['dtype']} tokens: it is cut. {again}")
    if expected is not None and size // dtype.itemsize != expected:
        raise DataError(
            f"{path} has {size // dtype.itemsize:,} tokens, but meta.json says {expected:,}: "
            f"the two come from different texts. {again}"
        )
    data = np.memmap(path, dtype=dtype, mode="r")
    top = int(data.max())
    if top >= meta["vocab_size"]:
        raise DataError(
            f"{path} holds token id {top}, but meta.json's vocabulary has {meta['vocab_size']} characters "
            f"(ids 0 to {meta['vocab_size'] - 1}): meta.json belongs to another text. {again}"
        )
    return data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--input",
        type=Path,
        default=None,
        help="a UTF-8 text file (default: data/input.txt, tiny Shakespeare); its line endings are read as \\n "
        "(\\r\\n and a lone \\r become one \\n, and the output says how many)",
    )
    ap.add_argument(
        "--out-dir", type=Path, default=HERE, help="where to write train.bin, val.bin, meta.json (default: data/)"
    )
    args = ap.parse_args(argv)
    try:
        path = args.input
        if path is None:
            path = HERE / "input.txt"
            if not path.exists():
                download_shakespeare(path)
        text, converted = read_text(path)
        meta = prepare(text, args.out_dir, name=None if path.name == "input.txt" else path.stem)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if converted:
        crlf = path.read_bytes().count(b"\r\n")
        print(
            f"note: {converted:,} line endings of {path} were converted to \\n ({crlf:,} \\r\\n, {converted - crlf:,} "
            f"lone \\r): its {len(text) + crlf:,} characters are prepared as {len(text):,}"
        )
    print(f"{path}: {meta['num_chars']:,} characters, vocabulary of {meta['vocab_size']}")
    print(f"train: {meta['train_tokens']:,} tokens, val: {meta['val_tokens']:,} tokens -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
