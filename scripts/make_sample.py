#!/usr/bin/env python
"""Regenerate ``data/sample/physionet2019_sample.tar.gz``: a small reproducible subset of PhysioNet 2019 A.

Selection rule (deterministic, no randomness):

1. read every ``training_setA/pNNNNNN.psv`` of the original archive; a stay is *septic* if any row has
   ``SepsisLabel`` = 1;
2. sort the septic stays and the non-septic stays by stay id, separately;
3. take every ``len(septic) // n_septic``-th septic stay starting with the first, keeping the first
   ``n_septic``, and likewise ``n_stays - n_septic`` non-septic stays (defaults: 200 stays, 30 septic,
   i.e. 15 % septic where set A has 8.8 %: the sample over-represents septic stays so the demo alerts).

The members are copied byte for byte from the original archive (each checked against
``SHA256SUMS_setA.txt`` when it is there) into a ``training_setA/`` folder, sorted by name, with the
original tar headers, a fixed gzip header (mtime 0, no file name) and compression level 9, so the same
input gives the same bytes (given the same zlib). Prints the composition and the SHA256 of the archive.

    python scripts/make_sample.py --source ../shared/data/physionet2019/training_setA.tar.gz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path

import numpy as np

from vigil.physionet import parse_psv

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "physionet2019" / "training_setA.tar.gz"
DEFAULT_OUT = REPO / "data" / "sample" / "physionet2019_sample.tar.gz"
FOLDER = "training_setA"


def every_kth(ids: list[str], n: int) -> list[str]:
    """Every ``len(ids) // n``-th id starting with the first, at most ``n``.

    >>> every_kth([f"p{i}" for i in range(10)], 3)
    ['p0', 'p3', 'p6']
    """
    if n <= 0 or not ids:
        return []
    step = max(1, len(ids) // n)
    return ids[::step][:n]


def select(labels: dict[str, bool], n_stays: int, n_septic: int) -> list[str]:
    """The sample's stay ids (sorted) from ``{stay id: septic}``."""
    septic = sorted(s for s, y in labels.items() if y)
    other = sorted(s for s, y in labels.items() if not y)
    return sorted(every_kth(septic, n_septic) + every_kth(other, n_stays - n_septic))


def read_checksums(source: Path) -> dict[str, str]:
    sums = source.parent / "SHA256SUMS_setA.txt"
    if not sums.exists():
        return {}
    out = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if name:
            out[Path(name).name] = digest
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="original training_setA.tar.gz")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--stays", type=int, default=200)
    ap.add_argument("--septic", type=int, default=30)
    args = ap.parse_args(argv)

    # Pass 1: label every stay (septic or not).
    labels: dict[str, bool] = {}
    with tarfile.open(args.source, "r|*") as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".psv"):
                f = tf.extractfile(m)
                assert f is not None
                stay = parse_psv(f.read(), Path(m.name).stem, f"{args.source}:{m.name}")
                labels[stay.stay_id] = bool(stay.septic)
    chosen = set(select(labels, args.stays, args.septic))

    # Pass 2: copy the chosen members' bytes and headers.
    members: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    with tarfile.open(args.source, "r|*") as tf:
        for m in tf:
            stem = Path(m.name).stem
            if m.isfile() and m.name.endswith(".psv") and stem in chosen:
                f = tf.extractfile(m)
                assert f is not None
                members[stem] = (m, f.read())
    checksums = read_checksums(args.source)
    for stem, (_, data) in members.items():
        want = checksums.get(f"{stem}.psv")
        if want and hashlib.sha256(data).hexdigest() != want:
            sys.exit(f"{stem}.psv: checksum mismatch against SHA256SUMS_setA.txt")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as out:
            first = next(iter(members.values()))[0]
            folder = tarfile.TarInfo(FOLDER)
            folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, first.mtime
            folder.uid, folder.gid = first.uid, first.gid
            folder.uname, folder.gname = first.uname, first.gname
            out.addfile(folder)
            for stem in sorted(members):
                info, data = members[stem]
                copy = tarfile.TarInfo(f"{FOLDER}/{stem}.psv")
                copy.size, copy.mode, copy.mtime = len(data), info.mode, info.mtime
                copy.uid, copy.gid, copy.uname, copy.gname = info.uid, info.gid, info.uname, info.gname
                out.addfile(copy, io.BytesIO(data))
    args.out.write_bytes(buf.getvalue())

    stays = [parse_psv(members[s][1], s) for s in sorted(members)]
    rows = sum(s.n_rows for s in stays)
    cells = sum(int(np.count_nonzero(~np.isnan(s.values))) for s in stays)
    n_septic = sum(bool(s.septic) for s in stays)
    print(f"source: {len(labels)} stays, {sum(labels.values())} septic")
    print(f"sample: {len(stays)} stays, {n_septic} septic, {rows} rows, {cells} measurements, "
          f"{cells + 2 * len(stays)} replay events (measurements + admit + discharge)")  # fmt: skip
    print(f"{args.out}: {args.out.stat().st_size} bytes, sha256 {hashlib.sha256(buf.getvalue()).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
