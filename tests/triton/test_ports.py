"""Which ports the local Triton takes: Triton's own unless reserved or taken, valid numbers."""

from __future__ import annotations

import pytest

from contracts.errors import ConfigError
from serving.triton.__main__ import main
from serving.triton.client import TritonClassifier
from serving.triton.ports import TRITON_PORTS
from serving.triton.server import TritonOptions, run_triton


@pytest.mark.triton
@pytest.mark.slow
def test_reserved_ports_are_left_to_their_owner(model_repository, tmp_path):
    # make run reserves the gateway's port (8000 by default): Triton's HTTP must not take it.
    options = TritonOptions(conventional_ports=True, reserved_ports=tuple(TRITON_PORTS.values()))
    with run_triton(model_repository, cache_dir=tmp_path, options=options) as server:
        assert not set(server.ports.values()) & set(TRITON_PORTS.values())
        assert server.port_notes == [
            f"Triton's HTTP port 8000 is reserved for another server of this stack: using "
            f"{server.ports['http']} instead",
            f"Triton's gRPC port 8001 is reserved for another server of this stack: using "
            f"{server.ports['grpc']} instead (clients: SKIN_TRITON_URL={server.grpc_url})",
            f"Triton's metrics port 8002 is reserved for another server of this stack: using "
            f"{server.ports['metrics']} instead",
        ]
        assert TritonClassifier(server.grpc_url).ready()


@pytest.mark.parametrize("port", [-1, 65536])
def test_port_out_of_range_is_a_clear_error(port, capsys):
    with pytest.raises(ConfigError, match=f"grpc_port must be 0 to 65535 .*not {port}"):
        TritonOptions(grpc_port=port)
    assert main(["--grpc-port", str(port)]) == 2
    assert f"error: grpc_port must be 0 to 65535 (0: a free port), not {port}" in (
        capsys.readouterr().err
    )
