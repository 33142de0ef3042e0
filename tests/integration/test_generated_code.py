"""The committed generated code is exactly what ``make proto`` produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO = "protos/sessionrec/v1/sessionrec.proto"
GENERATED = ("sessionrec_pb2.py", "sessionrec_pb2.pyi", "sessionrec_pb2_grpc.py")


def test_makefile_proto_target_uses_this_invocation():
    makefile = (REPO / "Makefile").read_text()
    assert "-m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=." in (
        makefile.replace("\\\n", " ").replace("\t", " ")
    )
    assert PROTO in makefile


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """Runs protoc once, with the Makefile's proto flags, into a tmp dir."""
    out = tmp_path_factory.mktemp("protoc")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iprotos",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            PROTO,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("name", GENERATED)
def test_generated_code_is_fresh(generated, name):
    fresh = generated / "sessionrec" / "v1" / name
    committed = REPO / "sessionrec" / "v1" / name
    assert fresh.is_file(), f"protoc did not write {fresh}"
    assert fresh.read_bytes() == committed.read_bytes(), (
        f"sessionrec/v1/{name} is stale: run `make proto` and commit the result"
    )
