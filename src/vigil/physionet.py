"""Readers for the PhysioNet/CinC Challenge 2019 data: stream ICU stays from any of its three layouts.

Layouts (picked from the path):

- a directory of ``pNNNNNN.psv`` files (or a directory holding one folder of them, e.g. ``training_setA/``);
- a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive in the PhysioNet layout (``training_setA/pNNNNNN.psv``),
  read as a stream with :mod:`tarfile` and never extracted to disk;
- a ``.parquet`` table: ``patient_id`` + the PhysioNet columns, rows sorted by patient then ``ICULOS``;
- a single ``.psv`` file.

A ``.psv`` file is pipe-separated with a header naming the 40 inputs and, in the training sets, the
``SepsisLabel`` column (a test-set file without it gives ``label=None``). Missing values are ``NaN``.
Values are parsed as float64 and stored as float32, exactly like ``setA.parquet``.

>>> header = "|".join(PSV_COLUMNS).encode()
>>> row = b"|".join([b"80"] + [b"NaN"] * 38 + [b"1", b"0"])  # HR 80, ICULOS 1, SepsisLabel 0
>>> stay = parse_psv(header + b"\\n" + row, "p000042")
>>> stay.stay_id, stay.values.shape, stay.static.shape, float(stay.values[0, 0]), int(stay.static[0, 5])
('p000042', (1, 34), (1, 6), 80.0, 1)
>>> stay.label.tolist()
[0]
"""

from __future__ import annotations

import bisect
import tarfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vigil.variables import STATIC, VARIABLES

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = [
    "LABEL",
    "PSV_COLUMNS",
    "INPUT_COLUMNS",
    "PhysioNetFormatError",
    "Stay",
    "parse_psv",
    "iter_stays",
    "read_frame",
    "layout_of",
]

LABEL = "SepsisLabel"
INPUT_COLUMNS: tuple[str, ...] = VARIABLES + STATIC  # the 40 inputs, in PhysioNet column order
PSV_COLUMNS: tuple[str, ...] = INPUT_COLUMNS + (LABEL,)  # the 41 columns of a training-set file

# Raw .psv bytes the tar reader may buffer at once (the whole of set A is ~131 MB); above it, the archive
# is read again once per batch of stays instead.
TAR_BUFFER_BYTES = 512 * 1024 * 1024
_PARQUET_BATCH_ROWS = 65_536
_ICULOS = STATIC.index("ICULOS")


class PhysioNetFormatError(ValueError):
    """A PhysioNet file (or archive member, or parquet table) that cannot be read; names the source."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"{source}: {message}")


@dataclass(frozen=True, slots=True)
class Stay:
    """One ICU stay: hourly rows of the 34 measurements, the 6 static columns and the label."""

    stay_id: str  # e.g. "p000001" (the file stem): an identifier, pseudonymise before it leaves the process
    values: np.ndarray  # float32 [n, 34] in VARIABLES order, NaN = missing
    static: np.ndarray  # float32 [n, 6] in STATIC order (Age, Gender, Unit1, Unit2, HospAdmTime, ICULOS)
    label: np.ndarray | None  # int8 [n] SepsisLabel; None when the source has no label column

    @property
    def n_rows(self) -> int:
        return int(self.values.shape[0])

    @property
    def iculos(self) -> np.ndarray:
        """ICULOS of each row as int64 (hours since ICU admission)."""
        return self.static[:, _ICULOS].astype(np.int64)

    @property
    def septic(self) -> bool | None:
        """Whether any row is labelled 1 (None without labels)."""
        return None if self.label is None else bool(self.label.any())


# --------------------------------------------------------------------------------------------- parsing


def _header_order(header: list[str], source: str) -> tuple[np.ndarray, bool]:
    """Column positions of INPUT_COLUMNS (+ label) in ``header``; whether the label is present."""
    pos = {name: i for i, name in enumerate(header)}
    if len(pos) != len(header):
        raise PhysioNetFormatError(source, "duplicate column names in the header")
    missing = [c for c in INPUT_COLUMNS if c not in pos]
    if missing:
        raise PhysioNetFormatError(source, f"header lacks columns {missing}")
    unknown = [c for c in header if c not in PSV_COLUMNS]
    if unknown:
        raise PhysioNetFormatError(source, f"unknown columns {unknown} in the header")
    has_label = LABEL in pos
    order = [pos[c] for c in (PSV_COLUMNS if has_label else INPUT_COLUMNS)]
    return np.asarray(order, dtype=np.intp), has_label


def _bad_token(tokens: list[bytes], ncol: int) -> tuple[int, int, bytes] | None:
    for i, tok in enumerate(tokens):
        try:
            float(tok)
        except ValueError:
            return i // ncol + 2, i % ncol + 1, tok  # 1-based file line (header = line 1), column
    return None


def parse_psv(data: bytes, stay_id: str, source: str | None = None) -> Stay:
    """Parse the bytes of one ``.psv`` file (vectorised: one numpy conversion per file).

    Empty fields read as missing, like ``NaN``; Windows line ends, a UTF-8 byte order mark and spaces around the
    header's names and the values are accepted. Raises :class:`PhysioNetFormatError` naming ``source``
    (default: the stay id) for a bad header, a row with the wrong number of fields, a value that is not a
    number, a label that is not 0/1, or a file without rows.
    """
    source = source or stay_id
    if not data.strip():
        raise PhysioNetFormatError(source, "empty file")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    data = data.removeprefix(b"\xef\xbb\xbf")  # the UTF-8 byte order mark of spreadsheet and Windows exports
    try:
        text_header, _, body = data.partition(b"\n")
        header = [name.strip() for name in text_header.decode("ascii").strip().split("|")]
    except UnicodeDecodeError as exc:
        raise PhysioNetFormatError(source, "header is not ASCII text") from exc
    order, has_label = _header_order(header, source)
    ncol = len(header)
    lines = [line for line in body.split(b"\n") if line.strip()]
    if not lines:
        raise PhysioNetFormatError(source, "no data rows")
    for i, line in enumerate(lines):
        if line.count(b"|") != ncol - 1:
            raise PhysioNetFormatError(
                source, f"row {i + 1} (line {i + 2}) has {line.count(b'|') + 1} fields, expected {ncol}"
            )
    tokens = b"|".join(lines).split(b"|")
    try:
        table = np.array(tokens).astype(np.float64)
    except ValueError:
        tokens = [t.strip() or b"nan" for t in tokens]
        try:
            table = np.array(tokens).astype(np.float64)
        except ValueError:
            where = _bad_token(tokens, ncol)
            detail = f"line {where[0]} column {where[1]}: {where[2][:40]!r}" if where else "unparseable value"
            raise PhysioNetFormatError(source, f"not a number at {detail}") from None
    table = table.reshape(len(lines), ncol)[:, order]
    nv, ns = len(VARIABLES), len(STATIC)
    values = np.ascontiguousarray(table[:, :nv], dtype=np.float32)
    static = np.ascontiguousarray(table[:, nv : nv + ns], dtype=np.float32)
    label = None
    if has_label:
        raw = table[:, nv + ns]
        if not np.isin(raw, (0.0, 1.0)).all():
            raise PhysioNetFormatError(source, f"{LABEL} must be 0 or 1")
        label = raw.astype(np.int8)
    if np.isnan(static[:, _ICULOS]).any():
        raise PhysioNetFormatError(source, "ICULOS is missing in some rows")
    return Stay(stay_id, values, static, label)


# --------------------------------------------------------------------------------------------- layouts


def layout_of(path: Path) -> str:
    """``"dir"``, ``"tar"``, ``"parquet"`` or ``"psv"``.

    >>> layout_of(Path("x/training_setA.tar.gz")), layout_of(Path("setA.parquet"))
    ('tar', 'parquet')
    """
    name = path.name.lower()
    if path.is_dir():
        return "dir"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".psv"):
        return "psv"
    msg = f"{path}: not a directory, .tar.gz/.tgz/.tar, .parquet or .psv"
    raise ValueError(msg)


def iter_stays(
    path: str | Path, limit: int | None = None, stay_ids: Collection[str] | None = None
) -> Iterator[Stay]:
    """Stream the stays under ``path`` (any layout, see the module doc), sorted by stay id.

    ``stay_ids`` keeps only those stays (absent ones are skipped silently); ``limit`` stops after that
    many stays (the first ones by id, after the ``stay_ids`` filter).
    """
    path = Path(path)
    if limit is not None and limit < 0:
        msg = f"limit must be >= 0, not {limit}"
        raise ValueError(msg)
    if not path.exists():
        raise FileNotFoundError(path)
    wanted = None if stay_ids is None else frozenset(stay_ids)
    if limit == 0:
        return iter(())
    layout = layout_of(path)
    if layout == "tar":
        return _iter_tar(path, limit, wanted)
    if layout == "parquet":
        return _iter_parquet(path, limit, wanted)
    return _iter_files(path, limit, wanted)


def _psv_files(path: Path) -> list[tuple[str, Path]]:
    if path.is_file():
        return [(path.stem, path)]
    files = list(path.glob("*.psv")) or list(path.glob("*/*.psv"))
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise PhysioNetFormatError(str(f), f"duplicate stay id {f.stem!r} (also {out[f.stem]})")
        out[f.stem] = f
    return sorted(out.items())


def _iter_files(path: Path, limit: int | None, wanted: frozenset[str] | None) -> Iterator[Stay]:
    files = [(sid, f) for sid, f in _psv_files(path) if wanted is None or sid in wanted]
    for sid, f in files[:limit]:
        yield parse_psv(f.read_bytes(), sid, str(f))


def _member_stay_id(name: str) -> str | None:
    base = name.rsplit("/", 1)[-1]
    if not base.endswith(".psv") or base.startswith("."):
        return None
    return base[: -len(".psv")]


def _iter_tar(path: Path, limit: int | None, wanted: frozenset[str] | None) -> Iterator[Stay]:
    """One streaming pass that keeps the bytes of the candidate members (bounded by ``limit`` and
    TAR_BUFFER_BYTES); if the buffer would overflow, further passes each collect one batch of stays."""
    members: dict[str, tuple[str, int]] = {}  # stay id -> (member name, size), every candidate
    kept: dict[str, bytes] = {}
    kept_order: list[str] = []  # sorted ids in ``kept`` (only maintained with a limit)
    buffered, overflow = 0, False
    with tarfile.open(path, "r|*") as tf:
        for m in tf:
            sid = _member_stay_id(m.name) if m.isfile() else None
            if sid is None or (wanted is not None and sid not in wanted):
                continue
            if sid in members:
                raise PhysioNetFormatError(f"{path}:{m.name}", f"duplicate stay id {sid!r}")
            members[sid] = (m.name, m.size)
            if overflow or (limit is not None and len(kept_order) >= limit and sid > kept_order[-1]):
                continue
            kept[sid] = _read_member(tf, m, path)
            buffered += len(kept[sid])
            if limit is not None:
                bisect.insort(kept_order, sid)
                if len(kept_order) > limit:
                    buffered -= len(kept.pop(kept_order.pop()))
            if buffered > TAR_BUFFER_BYTES:
                overflow = True
                kept.clear()
                kept_order.clear()
    selected = sorted(members)[:limit]
    if not overflow:
        for sid in selected:
            yield parse_psv(kept.pop(sid), sid, f"{path}:{members[sid][0]}")
        return
    # Too much to buffer: read the archive again once per batch of consecutive stays.
    batch: list[str] = []
    size = 0
    for sid in selected:
        batch.append(sid)
        size += members[sid][1]
        if size >= TAR_BUFFER_BYTES // 2:
            yield from _tar_batch(path, batch, members)
            batch, size = [], 0
    if batch:
        yield from _tar_batch(path, batch, members)


def _tar_batch(path: Path, batch: list[str], members: dict[str, tuple[str, int]]) -> Iterator[Stay]:
    by_name = {members[sid][0]: sid for sid in batch}
    got: dict[str, bytes] = {}
    with tarfile.open(path, "r|*") as tf:
        for m in tf:
            if m.name in by_name:
                got[by_name[m.name]] = _read_member(tf, m, path)
                if len(got) == len(batch):
                    break
    for sid in batch:
        if sid not in got:
            raise PhysioNetFormatError(f"{path}:{members[sid][0]}", "member vanished on a second read")
        yield parse_psv(got.pop(sid), sid, f"{path}:{members[sid][0]}")


def _read_member(tf: tarfile.TarFile, m: tarfile.TarInfo, path: Path) -> bytes:
    f = tf.extractfile(m)
    if f is None:
        raise PhysioNetFormatError(f"{path}:{m.name}", "cannot read archive member")
    return f.read()


def _parquet_columns(pf_schema_names: list[str], path: Path) -> tuple[list[str], bool]:
    names = set(pf_schema_names)
    missing = [c for c in ("patient_id", *INPUT_COLUMNS) if c not in names]
    if missing:
        raise PhysioNetFormatError(str(path), f"parquet table lacks columns {missing}")
    has_label = LABEL in names
    return ["patient_id", *(PSV_COLUMNS if has_label else INPUT_COLUMNS)], has_label


def _iter_parquet(path: Path, limit: int | None, wanted: frozenset[str] | None) -> Iterator[Stay]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise PhysioNetFormatError(str(path), f"not a readable parquet file ({exc})") from exc
    columns, has_label = _parquet_columns(pf.schema_arrow.names, path)
    value_set = pa.array(sorted(wanted), pa.string()) if wanted is not None else None
    pending: list[pa.RecordBatch] = []  # rows of the stay still open at the end of the last batch
    pending_id: str | None = None
    last_done: str | None = None
    count = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        if value_set is not None:
            batch = batch.filter(pc.is_in(batch.column(0).cast(pa.string()), value_set=value_set))
            if batch.num_rows == 0:
                continue
        ids = batch.column(0).cast(pa.string()).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        bounds = [0, *starts.tolist(), len(ids)]
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            sid = str(ids[s])
            if sid == pending_id:
                pending.append(batch.slice(s, e - s))
                continue
            if pending_id is not None:
                yield _parquet_stay(pending_id, pending, has_label, path)
                last_done = pending_id
                count += 1
                if limit is not None and count >= limit:
                    return
            if last_done is not None and sid <= last_done:
                raise PhysioNetFormatError(
                    str(path), f"rows are not sorted by patient_id ({sid!r} after {last_done!r})"
                )
            pending, pending_id = [batch.slice(s, e - s)], sid
    if pending_id is not None:
        yield _parquet_stay(pending_id, pending, has_label, path)


def _parquet_stay(sid: str, parts: list[pa.RecordBatch], has_label: bool, path: Path) -> Stay:
    import pyarrow as pa

    table = pa.Table.from_batches(parts)

    def col(name: str) -> np.ndarray:
        return table.column(name).to_numpy()

    values = np.column_stack([col(c) for c in VARIABLES]).astype(np.float32)
    static = np.column_stack([col(c) for c in STATIC]).astype(np.float32)
    label = None
    if has_label:
        lab = table.column(LABEL)
        if lab.null_count:
            raise PhysioNetFormatError(f"{path}:{sid}", f"{LABEL} has missing values")
        label = lab.to_numpy().astype(np.int8)
    if np.isnan(static[:, _ICULOS]).any():
        raise PhysioNetFormatError(f"{path}:{sid}", "ICULOS is missing in some rows")
    return Stay(sid, values, static, label)


# --------------------------------------------------------------------------------------------- frames


def read_frame(path: str | Path, limit: int | None = None) -> pd.DataFrame:
    """All rows of ``path`` (any layout) as one DataFrame: ``patient_id`` + the PhysioNet columns.

    dtypes match ``setA.parquet``: measurements and statics float32, ``ICULOS`` int16, ``SepsisLabel`` int8
    (absent when the source has no labels). ``limit`` keeps the first stays by id.
    """
    path = Path(path)
    if layout_of(path) == "parquet":
        return _parquet_frame(path, limit)
    return _stays_frame(list(iter_stays(path, limit=limit)))


def _stays_frame(stays: list[Stay]) -> pd.DataFrame:
    import pandas as pd

    has_label = bool(stays) and all(s.label is not None for s in stays)
    lengths = [s.n_rows for s in stays]
    ids = np.repeat(np.array([s.stay_id for s in stays], dtype=object), lengths)
    values = np.concatenate([s.values for s in stays]) if stays else np.empty((0, len(VARIABLES)), np.float32)
    static = np.concatenate([s.static for s in stays]) if stays else np.empty((0, len(STATIC)), np.float32)
    data: dict[str, np.ndarray] = {"patient_id": ids}
    for i, c in enumerate(VARIABLES):
        data[c] = values[:, i]
    for i, c in enumerate(STATIC):
        data[c] = static[:, i].astype(np.int16) if c == "ICULOS" else static[:, i]
    if has_label:
        data[LABEL] = np.concatenate([s.label for s in stays if s.label is not None]).astype(np.int8)
    return pd.DataFrame(data)


def _parquet_frame(path: Path, limit: int | None) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise PhysioNetFormatError(str(path), f"not a readable parquet file ({exc})") from exc
    columns, _ = _parquet_columns(pf.schema_arrow.names, path)
    filters = None
    if limit is not None:
        ids = pq.read_table(path, columns=["patient_id"]).column(0).cast(pa.string())
        first = pc.unique(ids).to_pylist()
        keep = sorted(first)[:limit]
        filters = [("patient_id", "in", keep)] if keep else None
        if not keep:
            return pq.read_table(path, columns=columns).slice(0, 0).to_pandas()
    table = pq.read_table(path, columns=columns, filters=filters)
    frame = table.to_pandas()
    if "ICULOS" in frame and frame["ICULOS"].dtype != np.int16:
        frame["ICULOS"] = frame["ICULOS"].astype(np.int16)
    return frame
