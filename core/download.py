"""Download the HiRISE v3.2 zip from Zenodo (record 4002935) with progress and an MD5 check.

    python -m core.download [--dest DIR]

Offline, it says what is missing and how to get it by hand; it never leaves a partial file behind
under the final name.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from core.digest import file_digest
from core.progress import ProgressCallback
from core.settings import PROJECT_ROOT

ZENODO_API = "https://zenodo.org/api/records"
V32_RECORD = "4002935"
V32_FILE = "hirise-map-proj-v3_2.zip"
DEFAULT_DEST = PROJECT_ROOT / "data"


class DownloadError(RuntimeError):
    """The download could not be done; the message says why and what to do instead."""


def _manual_hint(record: str, name: str, dest: Path) -> str:
    return (f"Download {name} by hand from https://zenodo.org/records/{record} and put it in {dest} "
            "(or anywhere), then point the Dataset page or --data at the zip.")


def file_info(record: str = V32_RECORD, name: str = V32_FILE, api: str = ZENODO_API,
              timeout: float = 20, dest: Path = DEFAULT_DEST) -> tuple[str, str | None, int | None]:
    """(download URL, md5, size) of one file of a Zenodo record, from the record's JSON. `dest`: where the
    file was meant to go, for the by-hand instructions when Zenodo cannot be reached."""
    try:
        with urllib.request.urlopen(f"{api}/{record}", timeout=timeout) as resp:
            meta = json.load(resp)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DownloadError(f"cannot reach Zenodo ({exc}); this machine looks offline. "
                            + _manual_hint(record, name, dest)) from exc
    except ValueError as exc:
        raise DownloadError(f"Zenodo sent an unreadable answer for record {record}") from exc
    for f in meta.get("files", []):
        if f.get("key") == name:
            checksum = f.get("checksum", "")
            md5 = checksum.split(":", 1)[1] if checksum.startswith("md5:") else None
            url = f.get("links", {}).get("self") or f"https://zenodo.org/records/{record}/files/{name}?download=1"
            return url, md5, f.get("size")
    raise DownloadError(f"record {record} has no file {name}")


def download(url: str, dest: Path, md5: str | None = None, size: int | None = None,
             on_progress: ProgressCallback | None = None, timeout: float = 60) -> Path:
    """Stream `url` to `dest` via a .part file, check its MD5, then move it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.md5()
    done = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = size or int(resp.headers.get("Content-Length") or 0)
            bar = None
            if on_progress is None:
                from tqdm.auto import tqdm
                bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=dest.name)
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                else:
                    on_progress(done, total, f"downloading {dest.name}")
            if bar is not None:
                bar.close()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"the download of {url} failed after {done / 2**20:.1f} MiB ({exc})") from exc
    if md5 and digest.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{dest.name}: MD5 {digest.hexdigest()} does not match Zenodo's {md5}; the file was "
                            "deleted, try again")
    part.replace(dest)
    return dest


def download_v32(dest_dir: Path = DEFAULT_DEST, api: str = ZENODO_API,
                 on_progress: ProgressCallback | None = None) -> Path:
    """The v3.2 zip in `dest_dir` (kept zipped: the data layer reads it as it is)."""
    dest = Path(dest_dir) / V32_FILE
    url, md5, size = file_info(api=api, dest=Path(dest_dir))
    if dest.is_file() and md5 and file_digest(dest, "md5") == md5:
        return dest
    return download(url, dest, md5, size, on_progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.download", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"folder for the zip (default {DEFAULT_DEST})")
    args = parser.parse_args(argv)
    try:
        path = download_v32(args.dest)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
