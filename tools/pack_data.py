"""Pack a data folder into the archive the repository ships: `data/jtcse-data.tar.xz` + `data/MANIFEST.sha256`.

    python tools/pack_data.py --source /path/to/data      # a folder holding senteval/ and wiki/

The archive is reproducible: members sorted by path, owner root, mode 0644/0755 and one fixed modification time,
so packing the same files twice gives the same bytes (for one version of liblzma). The manifest lists the
SHA-256 of every file inside the archive in `sha256sum` format; `jtcse_lib.data` verifies the unpacked copy
against it. See data/README.md for what the data is and where it comes from.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import lzma
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jtcse_lib.data import ARCHIVE_NAME, MANIFEST_NAME, SHIPPED_DIR  # noqa: E402

FOLDERS = ("senteval", "wiki")
MTIME = 1735689600  # 2025-01-01 00:00:00 UTC: any fixed value makes the archive reproducible


def _info(name: str, size: int | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
    if size is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = size, 0o644
    return info


def pack(source: Path, dest: Path) -> tuple[Path, Path]:
    files = sorted(p for folder in FOLDERS for p in (source / folder).rglob("*") if p.is_file())
    if not files:
        raise SystemExit(f"{source} holds no files under {', '.join(FOLDERS)}/")
    dirs = sorted({parent.as_posix() for p in files for parent in p.relative_to(source).parents
                   if str(parent) != "."})
    manifest, buffer = [], io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            tar.addfile(_info(d, None))
        for path in files:
            data, name = path.read_bytes(), path.relative_to(source).as_posix()
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
            manifest.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / ARCHIVE_NAME
    archive.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    (dest / MANIFEST_NAME).write_text("\n".join(manifest) + "\n", encoding="utf8")
    return archive, dest / MANIFEST_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, type=Path, help="a data folder holding senteval/ and wiki/")
    parser.add_argument("--dest", type=Path, default=SHIPPED_DIR, help="where the archive and manifest go")
    args = parser.parse_args()
    archive, manifest = pack(args.source.resolve(), args.dest)
    n = len(manifest.read_text().splitlines())
    print(f"{archive}: {archive.stat().st_size / 2**20:.2f} MiB, {n} files listed in {manifest}")


if __name__ == "__main__":
    main()
