"""The fake cloud is faithful: Alibaba Cloud's official SDKs, pointed at it, get correct answers, and
it rejects what the real services reject (a signature off by one byte, an expired SecurityToken).

Run by scripts/test inside the project's virtual environment (tests/sdk/requirements.txt).
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from alibabacloud_cr20181201 import models as cr_models
from alibabacloud_cr20181201.client import Client as CrClient
from alibabacloud_credentials.provider.ecs_ram_role import EcsRamRoleCredentialsProvider
from alibabacloud_credentials.provider.oidc import OIDCRoleArnCredentialsProvider
from alibabacloud_sts20150401 import models as sts_models
from alibabacloud_sts20150401.client import Client as StsClient
from alibabacloud_tea_openapi import models as open_api_models
from cryptography.hazmat.primitives.asymmetric import rsa
from Tea.exceptions import TeaException

HERE = Path(__file__).resolve().parent
FAKE = HERE.parent / "fake-cloud" / "fake_cloud.py"

AK, SECRET = "LTAI5tFakeUserKey01", "fake-user-secret-01"
ROLE = "acs:ram::1234567890123456:role/acr-puller"
OIDC_ROLE = "acs:ram::1234567890123456:role/rrsa-role"
OIDC_PROVIDER = "acs:ram::1234567890123456:oidc-provider/ack-rrsa-test"
ISSUER = "https://oidc.test.local/cluster"
SUBJECT = "system:serviceaccount:kube-system:aliyun-acr-credential-helper"
INSTANCE = "cri-fakeinstance0001"


class Jwks:
    """A tiny JWKS server and token minter standing in for an OIDC issuer."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="test-key", use="sig", alg="RS256")
        body = json.dumps({"keys": [jwk]}).encode()

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/openid/v1/jwks"

    def token(self, sub=SUBJECT, aud="sts.aliyuncs.com", iss=ISSUER, ttl=600):
        now = int(time.time())
        claims = {"iss": iss, "sub": sub, "aud": [aud], "iat": now, "nbf": now, "exp": now + ttl}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "test-key"})


@pytest.fixture(scope="module")
def jwks():
    j = Jwks()
    yield j
    j.server.shutdown()


@pytest.fixture(scope="module")
def fake(tmp_path_factory, jwks):
    tmp = tmp_path_factory.mktemp("fake")
    config = {
        "default_region": "cn-hangzhou",
        "access_keys": {AK: {"secret": SECRET, "principal": "user/ci"}},
        "roles": {
            ROLE: {"max_session_seconds": 43200, "trusted_principals": ["*"]},
            OIDC_ROLE: {"max_session_seconds": 3600,
                        "oidc_trust": {"provider_arn": OIDC_PROVIDER, "subjects": [SUBJECT]}},
        },
        "oidc_providers": {OIDC_PROVIDER: {"issuer": ISSUER, "jwks_url": jwks.url, "audience": "sts.aliyuncs.com"}},
        "instances": {
            INSTANCE: {
                "region": "cn-hangzhou",
                "endpoints": [
                    {"EndpointType": "internet", "Enable": True, "Status": "RUNNING",
                     "Domains": [{"Domain": "fake-registry.cn-hangzhou.cr.aliyuncs.com", "Type": "SYSTEM"}]},
                    {"EndpointType": "vpc", "Enable": True, "Status": "RUNNING",
                     "Domains": [{"Domain": "fake-registry-vpc.cn-hangzhou.cr.aliyuncs.com", "Type": "SYSTEM"},
                                 {"Domain": "registry.example.com", "Type": "USER"}]},
                ],
            }
        },
        "metadata": {"role": "worker-role", "region": "cn-hangzhou", "require_token": True},
    }
    cfg_path = tmp / "config.json"
    cfg_path.write_text(json.dumps(config))
    port_file = tmp / "port"
    proc = subprocess.Popen([sys.executable, str(FAKE), "--config", str(cfg_path), "--port-file", str(port_file)])
    deadline = time.time() + 20
    while not port_file.exists():
        assert proc.poll() is None, "the fake cloud exited"
        assert time.time() < deadline, "the fake cloud did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port_file.read_text()}"
    yield url
    proc.terminate()
    proc.wait(10)


def control(url, path, payload=None, method=None):
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url + path, data=data, method=method or ("POST" if data else "GET"))
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def sdk_config(url, ak=AK, secret=SECRET, token=None):
    # signature_algorithm='v2' selects the RPC signature v1 (HMAC-SHA1) path of the Tea SDKs.
    return open_api_models.Config(
        access_key_id=ak,
        access_key_secret=secret,
        security_token=token,
        endpoint=urllib.parse.urlsplit(url).netloc,
        protocol="http",
        signature_algorithm="v2",
        region_id="cn-hangzhou",
    )


def assume_role(url, **kw):
    req = sts_models.AssumeRoleRequest(role_arn=ROLE, role_session_name="sdk-test", duration_seconds=3600)
    return StsClient(sdk_config(url, **kw)).assume_role(req).body


def test_sts_assume_role_with_an_access_key(fake):
    body = assume_role(fake)
    creds = body.credentials
    assert creds.access_key_id.startswith("STS.")
    assert creds.access_key_secret and creds.security_token
    expires = time.mktime(time.strptime(creds.expiration, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert 3500 < expires - time.time() <= 3600
    assert body.assumed_role_user.arn == f"{ROLE}/sdk-test"
    assert body.request_id


def test_sts_assume_role_chained_from_sts_credentials(fake):
    first = assume_role(fake).credentials
    second = assume_role(fake, ak=first.access_key_id, secret=first.access_key_secret,
                         token=first.security_token).credentials
    assert second.access_key_id != first.access_key_id


def test_cr_enterprise_get_authorization_token_and_list_instance_endpoint(fake):
    client = CrClient(sdk_config(fake))
    token = client.get_authorization_token(cr_models.GetAuthorizationTokenRequest(instance_id=INSTANCE)).body
    assert token.is_success is True
    assert token.temp_username == "cr_temp_user"
    assert token.authorization_token
    assert token.expire_time > time.time() * 1000
    login = control(fake, "/_fake/registry-login",
                    {"username": token.temp_username, "password": token.authorization_token})
    assert login["valid"] is True, login

    eps = client.list_instance_endpoint(
        cr_models.ListInstanceEndpointRequest(instance_id=INSTANCE, module_name="Registry")).body
    assert eps.is_success is True
    domains = sorted(d.domain for e in eps.endpoints for d in e.domains)
    assert domains == ["fake-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
                       "fake-registry.cn-hangzhou.cr.aliyuncs.com", "registry.example.com"]


def test_cr_token_with_sts_credentials_lives_no_longer_than_them(fake):
    control(fake, "/_fake/config", {"lifetimes": {"sts_seconds": 1000}})
    try:
        creds = assume_role(fake).credentials
    finally:
        control(fake, "/_fake/config", {"lifetimes": {}})
    client = CrClient(sdk_config(fake, ak=creds.access_key_id, secret=creds.access_key_secret,
                                 token=creds.security_token))
    token = client.get_authorization_token(cr_models.GetAuthorizationTokenRequest(instance_id=INSTANCE)).body
    assert token.expire_time / 1000 - time.time() <= 1000


def test_one_changed_byte_of_the_signature_is_rejected(fake):
    """Signs a request exactly as the SDK does, then changes one byte of the signature."""
    from alibabacloud_openapi_util.client import Client as Util

    params = {
        "Action": "GetAuthorizationToken", "Version": "2018-12-01", "Format": "JSON", "AccessKeyId": AK,
        "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0", "SignatureNonce": os.urandom(8).hex(),
        "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "InstanceId": INSTANCE,
    }
    good = Util.get_rpcsignature(dict(params), "POST", SECRET)

    def post(signature, nonce):
        body = urllib.parse.urlencode(dict(params, SignatureNonce=nonce, Signature=signature)).encode()
        req = urllib.request.Request(fake + "/", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    raw = bytearray(base64.b64decode(good))
    raw[7] ^= 0x01
    bad = base64.b64encode(bytes(raw)).decode()
    status, body = post(bad, params["SignatureNonce"])
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch"), body
    # The same request correctly signed passes, so the rejection was the byte and nothing else.
    status, body = post(good, params["SignatureNonce"])
    assert status == 200 and body["IsSuccess"] is True, body
    # And a replay of it is refused.
    status, body = post(good, params["SignatureNonce"])
    assert body["Code"] == "SignatureNonceUsed", body


def test_an_expired_security_token_is_rejected(fake):
    control(fake, "/_fake/config", {"lifetimes": {"sts_seconds": 1}})
    try:
        creds = assume_role(fake).credentials
    finally:
        control(fake, "/_fake/config", {"lifetimes": {}})
    time.sleep(1.5)
    client = CrClient(sdk_config(fake, ak=creds.access_key_id, secret=creds.access_key_secret,
                                 token=creds.security_token))
    with pytest.raises(TeaException) as err:
        client.get_authorization_token(cr_models.GetAuthorizationTokenRequest(instance_id=INSTANCE))
    assert err.value.code == "InvalidSecurityToken.Expired"


def test_unknown_access_key_and_wrong_secret(fake):
    with pytest.raises(TeaException) as err:
        assume_role(fake, ak="LTAI5tNoSuchKey")
    assert err.value.code == "InvalidAccessKeyId.NotFound"
    with pytest.raises(TeaException) as err:
        assume_role(fake, secret="not-the-secret")
    assert err.value.code == "SignatureDoesNotMatch"


def test_sts_assume_role_with_oidc_via_the_sts_sdk(fake, jwks):
    client = StsClient(sdk_config(fake, ak=None, secret=None))
    req = sts_models.AssumeRoleWithOIDCRequest(
        role_arn=OIDC_ROLE, oidcprovider_arn=OIDC_PROVIDER, oidctoken=jwks.token(),
        role_session_name="sdk-oidc", duration_seconds=3600)
    body = client.assume_role_with_oidc(req).body
    assert body.credentials.access_key_id.startswith("STS.")
    assert body.oidctoken_info.subject == SUBJECT


@pytest.mark.parametrize("kwargs,code", [
    ({"aud": "kubernetes"}, "AuthenticationFail.OIDCToken.InvalidAudience"),
    ({"iss": "https://other.issuer"}, "AuthenticationFail.OIDCToken.InvalidIssuer"),
    ({"ttl": -60}, "AuthenticationFail.OIDCToken.Expired"),
    ({"sub": "system:serviceaccount:default:someone-else"}, "AuthenticationFail.NoPermission"),
])
def test_sts_assume_role_with_oidc_rejects_bad_tokens(fake, jwks, kwargs, code):
    client = StsClient(sdk_config(fake, ak=None, secret=None))
    req = sts_models.AssumeRoleWithOIDCRequest(
        role_arn=OIDC_ROLE, oidcprovider_arn=OIDC_PROVIDER, oidctoken=jwks.token(**kwargs),
        role_session_name="sdk-oidc", duration_seconds=3600)
    with pytest.raises(TeaException) as err:
        client.assume_role_with_oidc(req)
    assert err.value.code == code


def test_credentials_sdk_oidc_role_provider(fake, jwks, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(jwks.token())
    provider = OIDCRoleArnCredentialsProvider(
        role_arn=OIDC_ROLE, oidc_provider_arn=OIDC_PROVIDER, oidc_token_file_path=str(token_file),
        role_session_name="credentials-sdk", sts_endpoint=fake)
    creds = provider.get_credentials()
    assert creds.get_access_key_id().startswith("STS.")
    assert creds.get_security_token()
    assert creds.get_provider_name() == "oidc_role_arn"


def test_credentials_sdk_ecs_ram_role_in_hardened_mode(fake):
    before = control(fake, "/_fake/calls")["calls"]
    provider = EcsRamRoleCredentialsProvider(role_name="worker-role", disable_imds_v1=True,
                                             async_update_enabled=False)
    # The SDK has no endpoint option for the metadata service; point its host at the fake.
    provider._EcsRamRoleCredentialsProvider__metadata_service_host = fake
    creds = provider.get_credentials()
    assert creds.get_access_key_id().startswith("STS.")
    after = control(fake, "/_fake/calls")["calls"]
    assert after["MetadataToken"] == before["MetadataToken"] + 1, "hardened mode fetched a token"
    assert after["MetadataCredentials"] == before["MetadataCredentials"] + 1
    # The credentials work against STS.
    assume_role(fake, ak=creds.get_access_key_id(), secret=creds.get_access_key_secret(),
                token=creds.get_security_token())
