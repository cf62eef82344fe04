"""The copy-paste examples in README.md and docs/sdk.md run as written against `scaleset serve --demo`,
which also proves the demo itself works (issue 2 §1)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO, ServerProcess, dispose, new_data_dir

pytestmark = pytest.mark.e2e


def python_blocks(document: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", document.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def demo_server() -> Iterator[ServerProcess]:
    server = ServerProcess(
        new_data_dir("scaleset-demo-"), extra_args=("--demo", "--log-level", "info")
    ).start()
    try:
        deadline = time.monotonic() + 60
        assert server.log_path is not None
        while "demo ready" not in server.log_path.read_text():
            assert "demo stopped" not in server.log_path.read_text(), server.log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, server.log_path.read_text()[-2000:]
            time.sleep(0.2)
        yield server
    finally:
        dispose(server)  # the demo's own instances are still running by design; this removes them


def run_example(server: ServerProcess, code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], env=server.env, capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_demo_shows_three_answering_instances(demo_server: ServerProcess) -> None:
    assert demo_server.log_path is not None
    log = demo_server.log_path.read_text()
    assert len(re.findall(r"instance \d+ at http://127\.[\d.]+:8080/ answers", log)) == 3


def test_readme_sdk_example(demo_server: ServerProcess) -> None:
    (example,) = python_blocks(REPO / "README.md")

    lines = run_example(demo_server, example).strip().splitlines()

    assert len(lines) == 3
    assert all("'PowerState/running'" in line for line in lines)


def test_sdk_doc_example(demo_server: ServerProcess) -> None:
    first, _https = python_blocks(REPO / "docs" / "sdk.md")

    lines = run_example(demo_server, first).strip().splitlines()

    assert lines[0] == "Succeeded 1.1.0"
    assert len(lines) == 4
