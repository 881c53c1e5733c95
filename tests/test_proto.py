"""The committed generated code is exactly what `make proto` produces."""

import shutil
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ["dasgd/v1/membership.proto", "dasgd/v1/peer.proto"]
GENERATED = [
    f"dasgd/v1/{name}{suffix}"
    for name in ("membership", "peer")
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
]


def test_generated_code_matches_protos(tmp_path):
    for proto in PROTOS:
        (tmp_path / proto).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "proto" / proto, tmp_path / proto)
    args = [
        "protoc",
        f"-I{tmp_path}",
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        *[str(tmp_path / p) for p in PROTOS],
    ]
    assert protoc.main(args) == 0
    stale = [
        g for g in GENERATED if (tmp_path / g).read_bytes() != (ROOT / "proto" / g).read_bytes()
    ]
    assert not stale, f"run `make proto` and commit: {stale} differ from their .proto"
