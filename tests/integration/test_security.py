"""TLS, mutual TLS and bearer-token auth — one success and one refusal each, over real gRPC.

Certificates are generated here with ``cryptography``: a CA, a server certificate for
127.0.0.1/localhost, a client certificate from the same CA, and a rogue CA nobody trusts.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2

from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc
from featurizer.rpc.server import read_token
from tests.support.servers import health_status, running_server

TOKEN = "s3cret-token-for-tests"


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        cert.write_bytes(self.cert)
        key.write_bytes(self.key)
        return cert, key


def _issue(subject: str, issuer: "tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None" = None,
           *, ca: bool = False, server: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Pem]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_cert, issuer_key = issuer or (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer_cert.subject if issuer_cert else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    pem = Pem(cert.public_bytes(serialization.Encoding.PEM),
              key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
    return cert, key, pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key, ca = _issue("featurizer test CA", ca=True)
    _, _, server = _issue("featurizer server", (ca_cert, ca_key), server=True)
    _, _, client = _issue("featurizer client", (ca_cert, ca_key))
    rogue_cert, rogue_key, rogue = _issue("rogue CA", ca=True)
    _, _, intruder = _issue("intruder", (rogue_cert, rogue_key))
    server_cert, server_key = server.write(directory, "server")
    (directory / "ca.crt").write_bytes(ca.cert)
    return {"dir": directory, "ca": ca, "server_cert": server_cert, "server_key": server_key, "client": client,
            "rogue": rogue, "intruder": intruder}


def _list_models(channel: grpc.Channel, **kwargs) -> pb.ListModelsResponse:
    return pb_grpc.FeaturizerStub(channel).ListModels(pb.ListModelsRequest(), timeout=20, **kwargs)


def _refused(channel: grpc.Channel, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        _list_models(channel, **kwargs)
    return error.value


def test_tls_serves_a_client_trusting_the_ca_and_fails_one_that_does_not(demo_registry_template, pki):
    with running_server(demo_registry_template, tls_cert=pki["server_cert"], tls_key=pki["server_key"]) as server:
        trusted = grpc.ssl_channel_credentials(root_certificates=pki["ca"].cert)
        with grpc.secure_channel(server.target, trusted) as channel:
            assert "alexnet" in [m.name for m in _list_models(channel).models]
        untrusted = grpc.ssl_channel_credentials(root_certificates=pki["rogue"].cert)
        with grpc.secure_channel(server.target, untrusted) as channel:
            assert _refused(channel).code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(server.target) as channel:  # plaintext to a TLS port
            assert _refused(channel).code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate_signed_by_the_client_ca(demo_registry_template, pki):
    with running_server(demo_registry_template, tls_cert=pki["server_cert"], tls_key=pki["server_key"],
                        tls_client_ca=pki["dir"] / "ca.crt") as server:
        def credentials(pem: "Pem | None") -> grpc.ChannelCredentials:
            return grpc.ssl_channel_credentials(root_certificates=pki["ca"].cert, private_key=pem and pem.key,
                                                certificate_chain=pem and pem.cert)

        with grpc.secure_channel(server.target, credentials(pki["client"])) as channel:
            assert "alexnet" in [m.name for m in _list_models(channel).models]
        for pem in (None, pki["intruder"]):  # no certificate; one from a CA the server does not trust
            with grpc.secure_channel(server.target, credentials(pem)) as channel:
                assert _refused(channel).code() == grpc.StatusCode.UNAVAILABLE


def test_bearer_token_is_required_except_for_health(demo_registry_template, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with running_server(demo_registry_template, auth_token_file=token_file) as server:
        with grpc.insecure_channel(server.target) as channel:
            good = _list_models(channel, metadata=(("authorization", f"Bearer {TOKEN}"),))
            assert "alexnet" in [m.name for m in good.models]
            for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
                refused = _refused(channel, metadata=metadata)
                assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "authorization: Bearer" in refused.details() and TOKEN not in refused.details()
        assert health_status(server.target) == health_pb2.HealthCheckResponse.SERVING  # probes need no token
        assert server.sample("featurizer_requests_total", method="ListModels", model="", code="UNAUTHENTICATED") == 3


def test_an_empty_token_file_is_refused_before_serving(tmp_path):
    empty = tmp_path / "token"
    empty.write_text(" \n")
    with pytest.raises(ValueError, match="auth_token_file.*empty"):  # else "Bearer " would pass
        read_token(empty)
