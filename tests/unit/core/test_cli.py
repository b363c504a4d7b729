"""The `seqmnist` command: help that explains itself, clear errors instead of tracebacks."""

import subprocess
import sys

import pytest

from seqmnist.cli import build_parser

SUBCOMMANDS = ["download", "preprocess", "train", "evaluate", "export", "predict", "versions"]


def seqmnist(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seqmnist.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_top_level_help_lists_every_subcommand():
    text = build_parser().format_help()
    for name in SUBCOMMANDS:
        assert name in text


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_explains_itself(name, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([name, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: seqmnist {name}" in text
    assert len(text.splitlines()) > 5


def test_invalid_params_exit_2_naming_file_and_field(tmp_path):
    (tmp_path / "params.yaml").write_text(
        "download:\n  mirrors: [x]\ntrain:\n  model:\n    cell: transformer\n"
    )
    done = seqmnist("preprocess", cwd=tmp_path)
    assert done.returncode == 2
    assert "params.yaml: invalid parameters" in done.stderr
    assert "train.model.cell" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_params_file_is_a_clear_error(tmp_path):
    done = seqmnist("evaluate", cwd=tmp_path)
    assert done.returncode == 2
    assert "seqmnist evaluate: error: params.yaml: parameters file not found" in done.stderr


def test_unknown_top_level_keys_are_rejected(tmp_path):
    (tmp_path / "params.yaml").write_text("download:\n  mirrors: [x]\ntrian:\n  epochs: 3\n")
    done = seqmnist("train", cwd=tmp_path)
    assert done.returncode == 2
    assert "trian" in done.stderr


def test_train_without_a_compiler_says_how_to_go_on(tmp_path, monkeypatch):
    from support.tiny_data import write_processed

    write_processed(tmp_path / "data" / "processed")
    (tmp_path / "params.yaml").write_text(
        "download:\n  mirrors: [x]\ntrain:\n  epochs: 2\n  batch_size: 32\n"
        "  model:\n    units: 4\n    input_projection: 4\n"
    )
    monkeypatch.setenv("CXX", "no-such-compiler-for-seqmnist")
    monkeypatch.setenv("SEQMNIST_KERNEL_DIR", str(tmp_path / "kernels"))
    done = seqmnist("train", "--no-progress", cwd=tmp_path)
    assert done.returncode == 2
    assert "seqmnist train: error: cannot compile" in done.stderr
    assert "lstm_sequence.cc" in done.stderr and "train.lstm_backend: keras" in done.stderr
    assert "Traceback" not in done.stderr


# A stand-in for `main` that leaves what a real command leaves behind: an exit hook registered
# while it ran (as Prefect's log and event flushing is), a half-written line in stdout's buffer, a
# log record, and a non-daemon thread that must finish.
EXIT_HOOK_PROGRAM = """
import atexit, logging, sys, threading, time
from seqmnist import cli

def fake_main():
    atexit.register(lambda: print("hook ran after main", flush=True))
    logging.basicConfig(stream=sys.stderr, format="%(message)s", level=logging.INFO)
    logging.getLogger("seqmnist.test").info("logged")
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished"))).start()
    sys.stdout.write("buffered, no newline")
    return {code}

cli.main = fake_main
atexit.register(lambda: print("teardown ran"))  # registered before run(): skipped with it
cli.run()
"""


@pytest.mark.parametrize("code", [0, 3])
def test_the_command_skips_teardown_but_not_hooks_threads_or_buffers(code):
    done = subprocess.run(
        [sys.executable, "-c", EXIT_HOOK_PROGRAM.format(code=code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == code
    assert "buffered, no newline" in done.stdout
    assert "thread finished" in done.stdout
    assert "hook ran after main" in done.stdout
    assert "teardown ran" not in done.stdout
    assert done.stderr.strip() == "logged"


def test_a_command_that_raises_ends_the_usual_way():
    program = (
        "import atexit\nfrom seqmnist import cli\ncli.main = lambda: 1 / 0\n"
        "atexit.register(lambda: print('teardown ran'))\ncli.run()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "ZeroDivisionError" in done.stderr
    assert "teardown ran" in done.stdout
