"""The Zenodo download against a local server on 127.0.0.1, and its offline message."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading

import pytest

from core.download import V32_FILE, DownloadError, download_v32, file_info
from tests import synthetic


@pytest.fixture()
def zenodo(tmp_path):
    """A fake Zenodo: /api/records/4002935 (JSON) and the zip it names."""
    www = tmp_path / "www"
    (www / "api" / "records").mkdir(parents=True)
    zip_path = synthetic.write_zip(www / V32_FILE, synthetic.official_files("3.2", n_obs=2, per_obs=2), "top")
    md5 = hashlib.md5(zip_path.read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    base = f"http://127.0.0.1:{server.server_port}"

    def publish(checksum: str) -> None:
        record = {"files": [{"key": V32_FILE, "checksum": f"md5:{checksum}", "size": zip_path.stat().st_size,
                             "links": {"self": f"{base}/{V32_FILE}"}}]}
        (www / "api" / "records" / "4002935").write_text(json.dumps(record))

    publish(md5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield base, publish, zip_path
    server.shutdown()


def test_download_checks_md5_and_is_readable(tmp_path, zenodo):
    base, _, original = zenodo
    seen = []
    path = download_v32(tmp_path / "data", api=f"{base}/api/records", on_progress=lambda d, t, _: seen.append((d, t)))
    assert path.read_bytes() == original.read_bytes()
    assert seen and seen[-1][0] == seen[-1][1] == original.stat().st_size
    from core.data import read_source
    assert len(read_source(path).records) == 2 * 2 * 3


def test_md5_mismatch_deletes_the_file(tmp_path, zenodo):
    base, publish, _ = zenodo
    publish("0" * 32)
    with pytest.raises(DownloadError, match="does not match"):
        download_v32(tmp_path / "data", api=f"{base}/api/records")
    assert not list((tmp_path / "data").glob("*"))


def test_offline_says_what_to_do():
    with pytest.raises(DownloadError) as err:
        file_info(api="http://127.0.0.1:9/api/records", timeout=2)
    assert "offline" in str(err.value) and "zenodo.org/records/4002935" in str(err.value)


def test_offline_download_hint_names_the_chosen_folder(tmp_path, capsys):
    dest = tmp_path / "my-data"
    with pytest.raises(DownloadError, match=f"put it in {dest} "):
        download_v32(dest, api="http://127.0.0.1:9/api/records")
