"""A real Orthanc with its DICOMweb plugin, on 127.0.0.1, for the PACS tests.

Debian's ``orthanc`` and ``orthanc-dicomweb`` (``make test`` installs them as root on Debian, the
``pacs`` target); ``dciodvfy`` from ``dicom3tools`` validates what the exports write. Where they
are missing the tests are skipped with the reason in pytest's summary.

Each test gets its own server: a free port, a temporary storage folder and configuration, HTTP
Basic authentication on (user ``xal``), stopped after the test (and restartable on the same
storage, for the outage tests).
"""

from __future__ import annotations

import glob
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so*",
                "/usr/lib/x86_64-linux-gnu/orthanc/libOrthancDicomWeb.so*", "/usr/local/share/orthanc/plugins/*DicomWeb*")
USER, PASSWORD = "xal", "pacs-test-secret"


def _plugin() -> str | None:
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def _missing() -> str | None:
    if shutil.which("Orthanc") is None:
        return "no Orthanc here (Debian: apt-get install orthanc orthanc-dicomweb; `make test` does it as root)"
    if _plugin() is None:
        return "Orthanc's DICOMweb plugin is missing (Debian: apt-get install orthanc-dicomweb)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Orthanc:
    """One Orthanc process; ``url`` is the DICOMweb root, ``source`` the ``dicomweb+`` address."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.credentials = root / "credentials"
        self.credentials.write_text(f"{USER}:{PASSWORD}\n")
        storage = root / "storage"
        storage.mkdir()
        config = {
            "Name": "xal-pacs-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.port, "HttpBindAddress": "127.0.0.1", "RemoteAccessAllowed": False,
            "DicomServerEnabled": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [_plugin()], "StorageCompression": False, "HttpCompressionEnabled": False,
            "OverwriteInstances": False,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        }
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=1))
        self.url = f"http://127.0.0.1:{self.port}/dicom-web"
        self.source = f"dicomweb+{self.url}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        import httpx

        log = (self.root / "orthanc.log").open("ab")
        self.process = subprocess.Popen(["Orthanc", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.root)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/system", auth=(USER, PASSWORD), timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("Orthanc did not answer within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    # REST helpers (Orthanc's own API, to set up and inspect the archive)
    def rest(self, method: str, path: str, **kwargs):
        import httpx

        response = httpx.request(method, f"http://127.0.0.1:{self.port}{path}", auth=(USER, PASSWORD), timeout=30,
                                 **kwargs)
        response.raise_for_status()
        return response

    def upload(self, paths) -> None:
        """Store files as they are (``POST /instances``), damaged ones included."""
        for path in paths:
            self.rest("POST", "/instances", content=Path(path).read_bytes())

    def instances(self) -> list[str]:
        return self.rest("GET", "/instances").json()

    def tags(self, orthanc_id: str) -> dict:
        return self.rest("GET", f"/instances/{orthanc_id}/simplified-tags").json()

    def file(self, orthanc_id: str) -> bytes:
        return self.rest("GET", f"/instances/{orthanc_id}/file").content


@pytest.fixture
def orthanc(tmp_path):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    server = Orthanc(tmp_path / "orthanc")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dciodvfy():
    """A checker: ``check(path)`` asserts dicom3tools' dciodvfy reports no error for the file."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("no dciodvfy here (Debian: apt-get install dicom3tools; `make test` does it as root)")

    def check(path: Path) -> None:
        result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
        output = result.stdout + result.stderr
        errors = [line for line in output.splitlines() if line.startswith("Error")]
        assert not errors, f"dciodvfy {path.name}:\n" + "\n".join(errors)

    return check
