"""vigil.physionet: the three layouts (psv directory, tar.gz, parquet) give identical stays."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vigil import physionet
from vigil.physionet import PSV_COLUMNS, PhysioNetFormatError, Stay, iter_stays, parse_psv, read_frame
from vigil.variables import STATIC, VARIABLES

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "physionet2019_sample.tar.gz"
SHARED = REPO.parent / "shared" / "data" / "physionet2019"
N = 8  # stays in the tiny fixtures


def _sample_members(n: int = N) -> dict[str, bytes]:
    """The first ``n`` sample stays by id (plus the first septic one) as {stay id: psv bytes}."""
    out: dict[str, bytes] = {}
    with tarfile.open(SAMPLE, "r:gz") as tf:
        for m in tf.getmembers():
            if m.isfile() and m.name.endswith(".psv"):
                f = tf.extractfile(m)
                assert f is not None
                out[Path(m.name).stem] = f.read()
    ids = sorted(out)
    septic = next(s for s in ids if b"|1\n" in out[s] or out[s].rstrip().endswith(b"|1"))
    keep = sorted(set(ids[:n]) | {septic})
    return {s: out[s] for s in keep}


def _write_tar(path: Path, members: dict[str, bytes], shuffle: bool = True) -> Path:
    names = list(members)
    if shuffle:
        random.Random(3).shuffle(names)
    with tarfile.open(path, "w:gz") as tf:
        for sid in names:
            info = tarfile.TarInfo(f"training_setA/{sid}.psv")
            info.size = len(members[sid])
            tf.addfile(info, io.BytesIO(members[sid]))
    return path


def _write_parquet(path: Path, members: dict[str, bytes], row_group_size: int = 64) -> Path:
    """Independent of vigil: pandas parses the psv, then the setA.parquet dtypes."""
    frames = []
    for sid, data in sorted(members.items()):
        df = pd.read_csv(io.BytesIO(data), sep="|")
        df.insert(0, "patient_id", sid)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    for c in PSV_COLUMNS:
        df[c] = df[c].astype(np.float32)
    df["ICULOS"] = df["ICULOS"].astype(np.int16)
    df["SepsisLabel"] = df["SepsisLabel"].astype(np.int8)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="module")
def members() -> dict[str, bytes]:
    return _sample_members()


@pytest.fixture
def layouts(tmp_path: Path, members: dict[str, bytes]) -> dict[str, Path]:
    folder = tmp_path / "training_setA"
    folder.mkdir()
    for sid, data in members.items():
        (folder / f"{sid}.psv").write_bytes(data)
    return {
        "dir": folder,
        "tar": _write_tar(tmp_path / "subset.tar.gz", members),
        "parquet": _write_parquet(tmp_path / "subset.parquet", members),
    }


def _same(a: list[Stay], b: list[Stay]) -> None:
    assert [s.stay_id for s in a] == [s.stay_id for s in b]
    for x, y in zip(a, b, strict=True):
        assert x.values.dtype == y.values.dtype == np.float32
        assert x.static.dtype == y.static.dtype == np.float32
        assert x.values.shape == (x.n_rows, len(VARIABLES)) and x.static.shape == (x.n_rows, len(STATIC))
        np.testing.assert_array_equal(x.values, y.values)  # NaN == NaN here
        np.testing.assert_array_equal(x.static, y.static)
        assert x.label is not None and y.label is not None
        assert x.label.dtype == y.label.dtype == np.int8
        np.testing.assert_array_equal(x.label, y.label)


def test_three_layouts_identical(layouts: dict[str, Path], members: dict[str, bytes]) -> None:
    got = {name: list(iter_stays(p)) for name, p in layouts.items()}
    assert [s.stay_id for s in got["dir"]] == sorted(members)
    _same(got["dir"], got["tar"])
    _same(got["dir"], got["parquet"])
    assert any(s.septic for s in got["dir"]) and not all(s.septic for s in got["dir"])


def test_values_as_in_the_psv(members: dict[str, bytes]) -> None:
    sid = sorted(members)[0]
    stay = parse_psv(members[sid], sid)
    df = pd.read_csv(io.BytesIO(members[sid]), sep="|")
    np.testing.assert_array_equal(stay.values, df[list(VARIABLES)].to_numpy(np.float32))
    np.testing.assert_array_equal(stay.static, df[list(STATIC)].to_numpy(np.float32))
    assert stay.iculos.tolist() == df["ICULOS"].tolist()
    assert stay.label is not None and stay.label.tolist() == df["SepsisLabel"].tolist()


def test_parquet_stays_spanning_batches(layouts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    whole = list(iter_stays(layouts["dir"]))
    monkeypatch.setattr(physionet, "_PARQUET_BATCH_ROWS", 7)
    _same(whole, list(iter_stays(layouts["parquet"])))
    _same(whole[:3], list(iter_stays(layouts["parquet"], limit=3)))


def test_tar_reread_when_over_the_buffer(layouts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    whole = list(iter_stays(layouts["dir"]))
    monkeypatch.setattr(physionet, "TAR_BUFFER_BYTES", 20_000)  # a few stays per pass
    _same(whole, list(iter_stays(layouts["tar"])))
    _same(whole[:5], list(iter_stays(layouts["tar"], limit=5)))


@pytest.mark.parametrize("layout", ["dir", "tar", "parquet"])
def test_limit_and_stay_ids(layouts: dict[str, Path], members: dict[str, bytes], layout: str) -> None:
    path = layouts[layout]
    ids = sorted(members)
    assert [s.stay_id for s in iter_stays(path, limit=3)] == ids[:3]
    assert list(iter_stays(path, limit=0)) == []
    assert [s.stay_id for s in iter_stays(path, limit=100)] == ids
    pick = [ids[5], ids[1], "p999999"]  # order does not matter, unknown ids are skipped
    assert [s.stay_id for s in iter_stays(path, stay_ids=pick)] == [ids[1], ids[5]]
    assert [s.stay_id for s in iter_stays(path, stay_ids=pick, limit=1)] == [ids[1]]
    assert list(iter_stays(path, stay_ids=[])) == []


def test_read_frame_same_for_all_layouts(layouts: dict[str, Path], members: dict[str, bytes]) -> None:
    frames = {name: read_frame(p) for name, p in layouts.items()}
    ref = frames["parquet"]
    assert list(ref.columns) == ["patient_id", *PSV_COLUMNS]
    assert (
        ref["ICULOS"].dtype == np.int16
        and ref["SepsisLabel"].dtype == np.int8
        and ref["HR"].dtype == np.float32
    )
    assert ref["patient_id"].nunique() == len(members)
    for name in ("dir", "tar"):
        pd.testing.assert_frame_equal(frames[name], ref, check_dtype=True)
    two = sorted(members)[:2]
    for p in layouts.values():
        sub = read_frame(p, limit=2)
        assert sorted(sub["patient_id"].unique()) == two
        pd.testing.assert_frame_equal(sub, ref[ref["patient_id"].isin(two)].reset_index(drop=True))


def _psv(rows: list[list[str]], header: tuple[str, ...] = PSV_COLUMNS) -> bytes:
    return ("|".join(header) + "\n" + "".join("|".join(r) + "\n" for r in rows)).encode()


def _row(iculos: int = 1, hr: str = "80", label: str = "0", n_values: int = 41) -> list[str]:
    row = [hr] + ["NaN"] * 33 + ["60.5", "1", "0", "1", "-2.5", str(iculos), label]
    return row[:n_values]


def test_parse_small_file() -> None:
    stay = parse_psv(_psv([_row(3), _row(4, hr="NaN", label="1")]), "p000777")
    assert stay.stay_id == "p000777" and stay.n_rows == 2
    assert stay.iculos.tolist() == [3, 4] and stay.septic
    assert stay.values[0, 0] == 80 and np.isnan(stay.values[1, 0])
    np.testing.assert_array_equal(stay.static[0], np.array([60.5, 1, 0, 1, -2.5, 3], np.float32))


def test_no_label_column(tmp_path: Path) -> None:
    f = tmp_path / "p000123.psv"
    f.write_bytes(_psv([_row(1, n_values=40), _row(2, n_values=40)], header=PSV_COLUMNS[:-1]))
    (stay,) = iter_stays(f)
    assert stay.label is None and stay.septic is None and stay.stay_id == "p000123"
    assert "SepsisLabel" not in read_frame(f).columns


def test_columns_in_another_order() -> None:
    header = ("ICULOS", *[c for c in PSV_COLUMNS if c != "ICULOS"])
    row = _row(5)
    stay = parse_psv(_psv([[row[39], *row[:39], row[40]]], header=header), "p1")
    np.testing.assert_array_equal(stay.static, parse_psv(_psv([row]), "p1").static)


def test_exports_from_other_tools_read_the_same() -> None:
    """What a spreadsheet or a Windows export does to a file: CR LF line ends, a UTF-8 byte order mark, spaces
    around the names and values. Same stay; a non-ASCII header is still refused."""
    good = _psv([_row(3), _row(4, hr="NaN", label="1")])
    want = parse_psv(good, "p1")
    spaced = b"\n".join(b" | ".join(line.split(b"|")) for line in good.split(b"\n"))
    bom = b"\xef\xbb\xbf"
    for variant in (good.replace(b"\n", b"\r\n"), bom + good, spaced, bom + spaced.replace(b"\n", b"\r\n")):
        got = parse_psv(variant, "p1")
        np.testing.assert_array_equal(got.values, want.values)
        np.testing.assert_array_equal(got.static, want.static)
        np.testing.assert_array_equal(got.label, want.label)
    with pytest.raises(PhysioNetFormatError, match="not ASCII"):
        parse_psv("HR\u00e9".encode() + good[2:], "p1")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty file"),
        (_psv([]), "no data rows"),
        (_psv([_row(1), _row(2)[:-1]]), r"row 2 \(line 3\) has 40 fields, expected 41"),
        (_psv([_row(1), _row(2, hr="abc")]), "not a number at line 3 column 1: b'abc'"),
        (_psv([_row(1, label="2")]), "SepsisLabel must be 0 or 1"),
        (_psv([_row(1)], header=("HeartRate", *PSV_COLUMNS[1:])), "lacks columns"),
        (_psv([_row(1) + ["1"]], header=(*PSV_COLUMNS, "Extra")), "unknown columns"),
        (_psv([_row(1)[:39] + ["NaN", "0"]]), "ICULOS is missing"),
    ],
)
def test_malformed_file_names_the_file(tmp_path: Path, data: bytes, match: str) -> None:
    f = tmp_path / "p000042.psv"
    f.write_bytes(data)
    with pytest.raises(PhysioNetFormatError, match=match) as err:
        list(iter_stays(tmp_path))
    assert str(f) in str(err.value) and err.value.source == str(f)


def test_malformed_member_in_tar(tmp_path: Path, members: dict[str, bytes]) -> None:
    bad = dict(members)
    bad["p000002"] = _psv([_row(1), _row(2, hr="x1")])
    path = _write_tar(tmp_path / "bad.tar.gz", bad)
    with pytest.raises(PhysioNetFormatError, match=r"bad\.tar\.gz:training_setA/p000002\.psv: not a number"):
        list(iter_stays(path))


def test_duplicate_stay_in_tar(tmp_path: Path) -> None:
    path = tmp_path / "dup.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for folder in ("a", "b"):
            data = _psv([_row(1)])
            info = tarfile.TarInfo(f"{folder}/p000001.psv")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(PhysioNetFormatError, match="duplicate stay id"):
        list(iter_stays(path))


def test_unsorted_parquet_is_an_error(tmp_path: Path, members: dict[str, bytes]) -> None:
    path = _write_parquet(tmp_path / "x.parquet", members)
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table.slice(100), table.slice(0, 100)]), path)
    with pytest.raises(PhysioNetFormatError, match="not sorted by patient_id"):
        list(iter_stays(path))


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(iter_stays(tmp_path / "nope.parquet"))
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="not a directory"):
        list(iter_stays(tmp_path / "x.csv"))
    (tmp_path / "y.parquet").write_bytes(b"not parquet")
    with pytest.raises(PhysioNetFormatError, match="not a readable parquet"):
        list(iter_stays(tmp_path / "y.parquet"))


def test_sample_composition(sample_path: Path) -> None:
    stays = list(iter_stays(sample_path))
    assert len(stays) == 200 and sum(bool(s.septic) for s in stays) == 30
    assert [s.stay_id for s in stays] == sorted(s.stay_id for s in stays)
    assert sample_path.stat().st_size < 1_000_000


@pytest.mark.skipif(not (SHARED / "setA.parquet").exists(), reason="shared PhysioNet data not mounted")
def test_sample_equals_shared_parquet(sample_path: Path) -> None:
    sample = list(iter_stays(sample_path, limit=40))
    shared = list(iter_stays(SHARED / "setA.parquet", stay_ids=[s.stay_id for s in sample]))
    _same(sample, shared)
