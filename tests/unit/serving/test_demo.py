"""`seqmnist demo` without a browser: finding web/, deciding to build, serving, clear errors.

The page itself, in Chromium, is tested in tests/integration/web.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqmnist.errors import ModelFileError, SeqmnistError
from seqmnist.serving import demo

MODEL_BYTES = b"\x08\x07fake onnx bytes"
WASM_BYTES = b"\x00asm\x01\x00\x00\x00"
STARTUP_TIMEOUT_S = 60


def touch(path: Path, text: str = "", mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with a built page: dvc.yaml, web/ sources, web/dist/, a model."""
    touch(tmp_path / "dvc.yaml", "stages: {}\n")
    web = tmp_path / "web"
    for name in ("src/main.ts", "index.html", "package.json", "package-lock.json"):
        touch(web / name, mtime=1_000_000)
    touch(web / "dist" / "index.html", "<!doctype html><title>demo</title>", mtime=2_000_000)
    (web / "dist" / "assets").mkdir()
    (web / "dist" / "assets" / "ort.wasm").write_bytes(WASM_BYTES)
    touch(web / "dist" / "assets" / "index.js", "console.log(1)")
    (tmp_path / "model.onnx").write_bytes(MODEL_BYTES)
    return tmp_path


def test_project_root_is_found_from_a_subfolder(project: Path, tmp_path_factory) -> None:
    nested = project / "web" / "src"
    assert demo.find_project_root(nested) == project.resolve()
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(SeqmnistError, match=r"no dvc\.yaml here or in any parent"):
        demo.find_project_root(elsewhere)


def test_build_is_needed_when_missing_or_older_than_a_source(project: Path) -> None:
    web = project / "web"
    assert not demo.needs_build(web)
    touch(web / "src" / "framing.ts", mtime=3_000_000)
    assert demo.needs_build(web)
    touch(web / "dist" / "index.html", mtime=4_000_000)
    assert not demo.needs_build(web)
    touch(web / "package-lock.json", mtime=5_000_000)
    assert demo.needs_build(web)
    (web / "dist" / "index.html").unlink()
    assert demo.needs_build(web)


def test_build_without_npm_says_what_to_install(project: Path, monkeypatch) -> None:
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    with pytest.raises(SeqmnistError, match=r"npm not found.*Node\.js.*--no-build"):
        demo.build(project / "web")


def test_build_installs_then_builds_and_reports_failures(project: Path, monkeypatch) -> None:
    commands: list[list[str]] = []
    outcome = {"returncode": 0}

    def fake_run(command, **kwargs):
        commands.append(command[1:])
        return subprocess.CompletedProcess(command, outcome["returncode"], "", "vite: boom\n")

    monkeypatch.setattr(demo.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(demo.subprocess, "run", fake_run)
    demo.build(project / "web")
    assert commands == [list(demo.NPM_CI), list(demo.NPM_BUILD)], "no node_modules: npm ci first"
    touch(project / "web" / demo.NPM_INSTALLED_MARKER, mtime=3_000_000)
    commands.clear()
    outcome["returncode"] = 1
    with pytest.raises(SeqmnistError, match=r"(?s)`npm run build` failed in .*web.*vite: boom"):
        demo.build(project / "web")
    assert commands == [list(demo.NPM_BUILD)], "node_modules newer than the lockfile: no ci"


@pytest.fixture
def server(project: Path) -> Iterator[demo.DemoServer]:
    served = demo.DemoServer("127.0.0.1", 0, project / "web" / "dist", project / "model.onnx")
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server_close()
    thread.join()


def fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read(), response.headers["Content-Type"]


def test_server_serves_the_page_the_model_and_wasm_with_their_types(
    server: demo.DemoServer,
) -> None:
    page, page_type = fetch(server.url)
    assert b"<title>demo</title>" in page and page_type.startswith("text/html")
    assert fetch(f"{server.url}model.onnx?v=2") == (MODEL_BYTES, "application/octet-stream")
    assert fetch(f"{server.url}assets/ort.wasm") == (WASM_BYTES, "application/wasm")
    assert fetch(f"{server.url}assets/index.js")[1].startswith("text/javascript")


def test_a_port_in_use_is_a_clear_error(server: demo.DemoServer, project: Path) -> None:
    port = server.server_address[1]
    with pytest.raises(SeqmnistError, match=f"port {port} on 127.0.0.1 is already in use"):
        demo.DemoServer("127.0.0.1", port, project / "web" / "dist", project / "model.onnx")


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_a_missing_model_names_the_file(case: str, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    if case == "empty":
        path.write_bytes(b"")
    with pytest.raises(ModelFileError, match="dvc pull") as caught:
        demo.check_model(path)
    assert str(path) in str(caught.value)


def test_stage_fetches_the_registered_model_into_a_temp_folder(project: Path, monkeypatch) -> None:
    from seqmnist.registry import artifacts

    asked = {}

    def fake_fetch_model(stage: str, dest: Path) -> Path:
        asked.update(stage=stage, dest=dest)
        (dest / "model.onnx").write_bytes(MODEL_BYTES)
        return dest / "model.onnx"

    monkeypatch.setattr(artifacts, "fetch_model", fake_fetch_model)
    args = argparse.Namespace(stage="prod", model=project / "absent.onnx")
    with demo.chosen_model(args) as model:
        assert model.read_bytes() == MODEL_BYTES and asked["stage"] == "prod"
    assert not asked["dest"].exists(), "the temp folder is removed afterwards"


def seqmnist(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "seqmnist.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_demo_command_serves_until_ctrl_c(project: Path) -> None:
    process = seqmnist("demo", "--port", "0", "--no-build", "--model", "model.onnx", cwd=project)
    try:
        line = process.stdout.readline()
        assert line.startswith("seqmnist demo: serving"), line + process.stderr.read()
        url = line.split(" at ")[1].split()[0]
        assert fetch(f"{url}model.onnx")[0] == MODEL_BYTES
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=STARTUP_TIMEOUT_S)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "absent.onnx"], "absent.onnx: ONNX model not found"),
        (["--model", "model.onnx", "--port", "{busy}"], "already in use"),
    ],
)
def test_demo_command_errors_are_one_line(project: Path, args: list[str], words: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        args = [arg.replace("{busy}", port) for arg in args]
        process = seqmnist("demo", "--no-build", *args, cwd=project)
        _, err = process.communicate(timeout=STARTUP_TIMEOUT_S)
    assert process.returncode == 2
    assert err.startswith("seqmnist demo: error: ") and words in err and "Traceback" not in err


def test_no_build_without_a_built_page_says_how_to_build(project: Path) -> None:
    (project / "web" / "dist" / "index.html").unlink()
    process = seqmnist("demo", "--no-build", "--model", "model.onnx", cwd=project)
    _, err = process.communicate(timeout=STARTUP_TIMEOUT_S)
    assert process.returncode == 2 and "the page is not built" in err and "npm ci" in err
