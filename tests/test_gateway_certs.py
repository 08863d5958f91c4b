"""The gateways' certificates of ``mvs local --secure``: one CA kept in the state directory across runs, each run's
certificate signed by it for this host's addresses and the names given; where a gateway gathers ICE candidates
for each listen address."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from deploy.certs import CA_FILE, CA_KEY_FILE, gateway_certificate, host_names, is_address, kept_ca
from deploy.local_deployment import build_parser, config_from_args, ice_hosts_for
from streaming.ice import LOOPBACK


def test_the_ca_is_kept_and_every_run_certificate_covers_the_host_and_the_names(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first_cert, _ = gateway_certificate(state, host_names(["phone-gw.lan"]))
    ca_pem = (state / CA_FILE).read_bytes()
    second_cert, second_key = gateway_certificate(state, host_names(["phone-gw.lan"]))  # a second run
    assert (state / CA_FILE).read_bytes() == ca_pem, "a new CA: every phone would have to install it again"
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / CA_KEY_FILE).stat().st_mode & 0o777 == 0o600 and second_key.stat().st_mode & 0o777 == 0o600
    ca, _ = kept_ca(state)
    for path in (first_cert, second_cert):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cert.verify_directly_issued_by(ca)  # raises unless the kept CA signed it
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = set(san.get_values_for_type(x509.DNSName))
        addresses = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
        assert {"phone-gw.lan", "localhost"} <= names and "127.0.0.1" in addresses
        expected = {n for n in host_names() if is_address(n)}
        assert expected <= addresses  # every interface address a phone may type


@pytest.mark.parametrize(
    ("host", "ice"),
    [("127.0.0.1", LOOPBACK), ("localhost", LOOPBACK), ("0.0.0.0", ()), ("192.0.2.7", ("192.0.2.7",))],
)
def test_gateways_gather_ice_candidates_where_they_listen(host: str, ice: tuple[str, ...]) -> None:
    assert ice_hosts_for(host) == ice


def test_mvs_local_flags_for_phones() -> None:
    args = ["--secure", "--host", "0.0.0.0", "--public-name", "mvs.lan", "--state-dir", "/tmp/mvs-state"]
    config = config_from_args(build_parser().parse_args(args))
    assert config.gateway_host == "0.0.0.0" and config.public_names == ("mvs.lan",)
    assert config.state_dir == Path("/tmp/mvs-state")
