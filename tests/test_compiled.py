"""The compiled build of the signalling hot path (sip/_compiled.py) and its reference.

The suite runs against the compiled modules (``make install`` builds them); the
tests of those modules run once more here as plain Python, the reference build.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sip import _compiled
from tests.peers import REPO as ROOT
from tests.peers import python_output, python_run

#: The tests of the compiled modules, run again against the plain-Python build.
REFERENCE_TESTS = (
    "tests/test_message.py",
    "tests/test_transaction.py",
    "tests/test_uri.py",
    "tests/test_rfc4475.py",
    "tests/test_rfc5118.py",
    "tests/test_auth_headers.py",
    "tests/test_sip_scan.py",
    "tests/test_sip_values.py",
    "tests/test_sip_check.py",
    "tests/test_timestamps.py",
    "tests/test_timer_wheel.py",
    "tests/test_audit.py",
    "tests/test_admission.py",
    "tests/test_routing.py",
    "tests/test_proxy.py",
    "tests/test_proxy_media.py",
    "tests/test_framing.py",
    "tests/test_transport.py",
    "tests/test_flows.py",
    "tests/test_random_tokens.py",
    "tests/test_metrics.py",
)


def status_in_subprocess(**env: str) -> tuple[bool, str]:
    out = python_output("from sip import _compiled; print(*_compiled.status())", **env)
    used, _, why = out.partition(" ")
    return used == "True", why


def test_the_compiled_build_is_in_use() -> None:
    used, why = _compiled.status()
    assert used, f"the compiled core is not in use: {why} (run `make install`)"
    for module in _compiled.MODULES:
        importlib.import_module(module)
    missing = [m for m in _compiled.MODULES if not _compiled.in_use(m)]
    assert not missing, f"imported as plain Python: {missing}"


@pytest.mark.timeout(900)  # about a minute: the tests of 20 modules
def test_the_reference_build_passes_the_tests_of_the_compiled_modules() -> None:
    env = {**os.environ, "SIPEDGE_PURE_PYTHON": "1"}
    assert status_in_subprocess(SIPEDGE_PURE_PYTHON="1") == (False, "SIPEDGE_PURE_PYTHON=1")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *REFERENCE_TESTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " skipped" not in run.stdout, run.stdout[-500:]


def test_a_stale_or_foreign_build_is_never_used(tmp_path: Path) -> None:
    built = _compiled.directory()
    assert (built / _compiled.MANIFEST).exists(), "no compiled build (run `make install`)"
    copy = tmp_path / "compiled"
    shutil.copytree(built, copy)
    manifest = json.loads((copy / _compiled.MANIFEST).read_text())
    assert status_in_subprocess(SIPEDGE_COMPILED_DIR=str(copy)) == (True, str(copy))

    # A source edited since the build: its compiled module would shadow the edit.
    edited = dict(manifest, sources={**manifest["sources"], "sip.message": "0" * 64})
    (copy / _compiled.MANIFEST).write_text(json.dumps(edited))
    used, why = status_in_subprocess(SIPEDGE_COMPILED_DIR=str(copy))
    assert not used and why.startswith("stale: sip.message changed"), why

    # Built by another interpreter.
    (copy / _compiled.MANIFEST).write_text(json.dumps(dict(manifest, build="cpython-39-linux")))
    used, why = status_in_subprocess(SIPEDGE_COMPILED_DIR=str(copy))
    assert not used and why.startswith("built for another Python"), why

    # Not built at all.
    used, why = status_in_subprocess(SIPEDGE_COMPILED_DIR=str(tmp_path / "none"))
    assert not used and why.startswith("not built"), why


def test_make_rebuilds_when_any_compiled_source_changes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    listed = makefile.split("COMPILED_SOURCES :=", 1)[1].split("\n\n", 1)[0]
    sources = {p for p in listed.replace("\\", " ").split() if p.endswith(".py")}
    assert sources == {str(_compiled.source_path(m).relative_to(ROOT)) for m in _compiled.MODULES}


def train(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return python_run([str(ROOT / "scripts" / "pgo_train.py"), *args], timeout=300, **env)


def test_the_training_run_proxies_calls_through_the_compiled_build() -> None:
    run = train("--calls", "60")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("pgo_train: 60 calls proxied"), run.stdout


def test_the_training_run_refuses_to_profile_plain_python() -> None:
    # Counts from the wrong run would lay the compiled code out for nothing.
    run = train("--calls", "10", SIPEDGE_PURE_PYTHON_COMPILED="1")
    assert run.returncode == 1
    assert "not loaded" in run.stderr and "SIPEDGE_PURE_PYTHON_COMPILED=1" in run.stderr


def test_a_build_tells_whether_it_was_profile_guided() -> None:
    manifest = json.loads((_compiled.directory() / _compiled.MANIFEST).read_text())
    assert "pgo" in manifest, "build/compiled predates the PGO build: run make install"
    assert _compiled.profile() == manifest["pgo"]
    if manifest["pgo"] is not None:
        assert manifest["pgo"].startswith("gcc, ") and "calls proxied" in manifest["pgo"]
