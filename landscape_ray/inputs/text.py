"""Text data as windows of token ids, for causal language models.

    texts = read_texts("corpus.jsonl", text_field="text")           # one string per line (.txt: the whole file)
    ids = token_windows(texts, tokenizer, seq_len=128)               # int64 (n, 128)
    train = load_text_split(["a.txt", "b.parquet"], "train", tokenizer, 128, sequences=64, seed=0)
    test = load_text_split(None, "test", tokenizer, 128, sequences=None)  # the bundled text (pydoc's help topics)

The texts of one file are tokenized one by one (with the special tokens the tokenizer itself adds), their ids
concatenated in order and cut into consecutive windows of `seq_len`; the incomplete tail is dropped. Windows never
span two files. The windows of each file are cached as .npy under `cache_dir("tokens")`, keyed by the file's and
the tokenizer's hashes, so the workers of a run tokenize a large corpus once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import cache_dir, replace_file

SUFFIXES = (".txt", ".jsonl", ".parquet")
CACHE_VERSION = "1"  # bump when the windows of the same inputs change


def bundled_text(split: str) -> str:
    """A small corpus that ships with Python: pydoc's help topics (~465k characters), the first 90 % of the sorted
    topics for "train", the rest for "test"."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    cut = int(len(keys) * 0.9)
    if split not in ("train", "test"):
        raise SpecError(f"split: the bundled text has a train and a test split, not {split!r}")
    return "\n\n".join(topics[k] for k in (keys[:cut] if split == "train" else keys[cut:]))


def _utf8(data: bytes, path: Path, field: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"{field}: {path} is not UTF-8 text (byte {err.start})") from None


def _jsonl(path: Path, text_field: str, field: str) -> list[str]:
    texts = []
    for number, line in enumerate(_utf8(path.read_bytes(), path, field).splitlines(), 1):
        if not line.strip():  # blank lines (a trailing newline, say) hold no record
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SpecError(f"{field}: {path} line {number} is not JSON ({err.msg})") from None
        if not isinstance(record, dict) or text_field not in record:
            raise SpecError(f"{field}: {path} line {number} has no {text_field!r} field (data.text_field)")
        if not isinstance(record[text_field], str):
            kind = type(record[text_field]).__name__
            raise SpecError(f"{field}: {path} line {number}: {text_field!r} is a {kind}, not a string")
        texts.append(record[text_field])
    return texts


def _parquet(path: Path, text_field: str, field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        if text_field not in schema.names:
            raise SpecError(f"{field}: {path} has no column {text_field!r} (data.text_field); it has {schema.names}")
        column = pq.read_table(path, columns=[text_field]).column(text_field)
    except (pa.ArrowException, OSError) as err:
        raise SpecError(f"{field}: cannot read {path} as parquet: {str(err).splitlines()[0]}") from err
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) or column.null_count:
        raise SpecError(f"{field}: {path} column {text_field!r} must hold strings, without nulls ({column.type})")
    return column.to_pylist()


def read_texts(path: str, text_field: str = "text", field: str = "data.files.train[0]") -> list[str]:
    """The texts of a .txt (the whole file), .jsonl (`text_field` of each line) or .parquet (its column) file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{field}: file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [_utf8(path.read_bytes(), path, field)]
    if suffix == ".jsonl":
        return _jsonl(path, text_field, field)
    if suffix == ".parquet":
        return _parquet(path, text_field, field)
    raise SpecError(f"{field}: {path}: text files must end in {', '.join(SUFFIXES)}, not {suffix or 'nothing'!r}")


def token_windows(texts: list[str], tokenizer, seq_len: int) -> np.ndarray:
    """int64 (n, seq_len): the ids of `texts` (each tokenized on its own) concatenated, cut into whole windows."""
    if seq_len < 1:
        raise SpecError(f"data.seq_len: must be at least 1, got {seq_len}")
    ids = []
    for text in texts:
        # verbose=False: a text longer than the model's context is expected here, it is cut into windows below
        ids.extend(tokenizer(text, verbose=False)["input_ids"])
    n = len(ids) // seq_len
    return np.asarray(ids[: n * seq_len], dtype=np.int64).reshape(n, seq_len)


def tokenizer_hash(tokenizer) -> str:
    """What decides the ids a tokenizer gives: its full serialization (tokenizer.json, with the post-processor that
    adds special tokens), or for a tokenizer without one, its class and vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = (
        backend.to_str()
        if backend is not None
        else type(tokenizer).__name__ + repr(sorted(tokenizer.get_vocab().items()))
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached(key: str, seq_len: int, compute) -> np.ndarray:
    """The array stored under `key`, or `compute()` stored there (atomically: other processes read it too)."""
    path = cache_dir("tokens") / f"{key}.npy"
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.dtype == np.int64 and cached.ndim == 2 and cached.shape[1] == seq_len:
            return cached
    except (OSError, ValueError, EOFError):  # absent, or a damaged file: compute it again
        pass
    windows = compute()

    def save(temporary: Path) -> None:
        with open(temporary, "wb") as f:  # a file object: np.save would add ".npy" to a name
            np.save(f, windows, allow_pickle=False)

    try:
        replace_file(path, save)
    except OSError:  # a read-only or full cache only costs the next run the tokenizing
        pass
    return windows


def _windows(source: str | None, split: str, tokenizer, tok_hash: str, seq_len: int, text_field: str, field: str):
    """The windows of one file (or of the bundled text of `split` when `source` is None), through the cache."""
    if source is None:
        text = bundled_text(split)
        origin = hashlib.sha256(text.encode()).hexdigest()
        compute = lambda: token_windows([text], tokenizer, seq_len)
    else:
        if not Path(source).is_file():
            raise SpecError(f"{field}: file not found: {source}")
        origin = _file_hash(Path(source))
        compute = lambda: token_windows(read_texts(source, text_field, field), tokenizer, seq_len)
    key = hashlib.sha256(f"{CACHE_VERSION} {origin} {tok_hash} {seq_len} {text_field}".encode()).hexdigest()
    return _cached(key, seq_len, compute)


def load_text_split(
    files: list[str] | None,
    split: str,
    tokenizer,
    seq_len: int,
    sequences: int | None,
    text_field: str = "text",
    seed: int | None = None,
) -> np.ndarray:
    """int64 (M, seq_len): the windows of `files` in order (None: the bundled text of `split`); `sequences` of
    them (None: all), the first ones, or with `seed` a seeded subset kept in order."""
    tok_hash = tokenizer_hash(tokenizer)
    sources = [None] if files is None else list(files)
    parts = [
        _windows(s, split, tokenizer, tok_hash, seq_len, text_field, f"data.files.{split}[{i}]")
        for i, s in enumerate(sources)
    ]
    windows = np.concatenate(parts) if parts else np.zeros((0, seq_len), np.int64)
    n = len(windows)
    what = "the bundled" if files is None else "the"
    if n == 0:
        raise SpecError(f"data.files.{split}: {what} {split} text holds no whole sequence of {seq_len} tokens")
    if sequences is None:
        return windows
    if sequences > n:
        raise SpecError(
            f"data.sequences: {sequences} sequences of {seq_len} tokens asked for, {what} {split} text holds only {n}"
        )
    if seed is None:
        return windows[:sequences]
    return windows[np.sort(np.random.default_rng(seed).choice(n, sequences, replace=False))]
