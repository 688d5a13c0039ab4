#!/usr/bin/env python3
"""A fake Alibaba Cloud for tests and the demo: STS, Container Registry (Enterprise 2018-12-01 RPC
and Personal 2016-06-07 ROA) and the ECS metadata service, on one loopback HTTP port.

It checks what the real services check, as described in shared/spec/alibaba-cloud.md:
- RPC signature v1 (HMAC-SHA1) and ROA signatures, byte for byte (`SignatureDoesNotMatch`);
- that the AccessKeyId exists (`InvalidAccessKeyId.NotFound`), and that a SecurityToken was issued
  here with that AccessKeyId and has not expired (`InvalidSecurityToken.Expired` / `.Malformed`);
- the request Timestamp (15 minutes of skew, `InvalidTimeStamp.Expired`) and that a
  SignatureNonce is never used twice (`SignatureNonceUsed`);
- RRSA: the OIDC token's RS256 signature against the provider's JWKS URL (the local API server's
  /openid/v1/jwks), its issuer, audience (`sts.aliyuncs.com`), expiry, and subject against the
  role's trust policy;
- role trust for AssumeRole (which principals may assume a role) and DurationSeconds bounds.
It issues STS credentials and registry passwords with configurable lifetimes, and expires them.

Routes
  POST|GET /                      RPC (STS when Version=2015-04-01, CR when Version=2018-12-01)
  POST|GET /r/<region>/           the same, recording <region> as the endpoint's region
  GET /tokens, /r/<region>/tokens  CR Personal Edition GetAuthorizationToken (ROA)
  PUT /latest/api/token           ECS metadata hardened-mode token
  GET /latest/meta-data/...       ECS metadata (region-id, ram/security-credentials/[role])
  /_fake/...                      control: calls, faults, config, minting and checking credentials

The configuration is a JSON file (see tests/fake-cloud/README.md and the example in
tests/fake-cloud/example-config.json); the control API changes parts of it at run time.
"""
from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import hmac
import json
import os
import re
import secrets
import ssl
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STS_VERSION = "2015-04-01"
CR_VERSION = "2018-12-01"
CR_PERSONAL_VERSION = "2016-06-07"
MAX_SKEW_SECONDS = 15 * 60
ARN_ROLE = re.compile(r"^acs:ram::(\d+):role/([A-Za-z0-9._@-]+)$")
SESSION_NAME = re.compile(r"^[A-Za-z0-9.@_-]{2,64}$")

APIS = (
    "AssumeRole",
    "AssumeRoleWithOIDC",
    "GetAuthorizationToken",
    "ListInstanceEndpoint",
    "GetPersonalAuthorizationToken",
    "MetadataToken",
    "MetadataRegion",
    "MetadataRoleName",
    "MetadataCredentials",
)


def percent_encode(value: str) -> str:
    """Keeps A-Z a-z 0-9 - _ . ~ and encodes every other UTF-8 byte as %XY (upper-case hex)."""
    out = []
    for b in value.encode("utf-8"):
        c = chr(b)
        if c.isascii() and (c.isalnum() or c in "-_.~"):
            out.append(c)
        else:
            out.append("%%%02X" % b)
    return "".join(out)


def rpc_string_to_sign(method: str, params: dict) -> str:
    canonical = "&".join(
        f"{percent_encode(k)}={percent_encode(v)}"
        for k, v in sorted(params.items(), key=lambda kv: kv[0].encode("utf-8"))
        if k != "Signature"
    )
    return f"{method}&%2F&{percent_encode(canonical)}"


def hmac_sha1_b64(key: str, data: str) -> str:
    return base64.b64encode(hmac.new(key.encode(), data.encode(), hashlib.sha1).digest()).decode()


def roa_string_to_sign(method: str, headers: dict, resource: str, query: dict) -> str:
    lower = {k.lower(): v for k, v in headers.items()}
    out = "%s\n%s\n%s\n%s\n%s\n" % (
        method,
        lower.get("accept", ""),
        lower.get("content-md5", ""),
        lower.get("content-type", ""),
        lower.get("date", ""),
    )
    for name in sorted(k for k in lower if k.startswith("x-acs-")):
        out += f"{name}:{lower[name]}\n"
    out += resource
    if query:
        out += "?" + "&".join(k if v == "" else f"{k}={v}" for k, v in sorted(query.items()))
    return out


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class CloudError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Fault:
    def __init__(self, spec: dict):
        self.kind = spec["kind"]  # http500 | throttling | timeout | slow | malformed | error
        self.remaining = int(spec.get("count", 1))  # -1: until cleared
        self.delay = float(spec.get("delay_seconds", 30 if self.kind == "timeout" else 2))
        self.status = int(spec.get("status", 403))
        self.code = spec.get("code", "NoPermission")
        self.message = spec.get("message", "injected fault")


class State:
    """Everything the fake knows. Guarded by one lock; handlers hold it only briefly."""

    def __init__(self, config: dict):
        self.lock = threading.Lock()
        self.config = config
        self.calls: dict[str, int] = {api: 0 for api in APIS}
        self.call_regions: dict[str, dict[str, int]] = {}
        self.faults: dict[str, list[Fault]] = {}
        self.nonces: set[str] = set()
        # SecurityToken -> {access_key_id, secret, expires, principal}
        self.sts_tokens: dict[str, dict] = {}
        # STS AccessKeyId -> SecurityToken
        self.sts_keys: dict[str, str] = {}
        # registry password -> {username, expires, instance}
        self.registry_passwords: dict[str, dict] = {}
        self.metadata_tokens: dict[str, float] = {}
        self.record_config_secrets(config)

    # --- the suite's secret-leak audit
    def record_secret(self, value) -> None:
        """Appends a secret value this fake was configured with, issued or received to the file
        ACR_HELPER_LEAK_SECRETS names (the end-to-end suite's leak audit searches every log, Event,
        metrics page and asserted error for them). One value per line, hex-encoded."""
        path = os.environ.get("ACR_HELPER_LEAK_SECRETS")
        if not path or not value:
            return
        # One short O_APPEND write per value: lines from several threads never interleave.
        with open(path, "a", encoding="utf-8") as f:
            f.write(str(value).encode().hex() + "\n")

    def record_config_secrets(self, config: dict) -> None:
        for entry in (config.get("access_keys") or {}).values():
            self.record_secret(entry.get("secret"))

    # --- configuration helpers
    def lifetime(self, name: str, default: int) -> int:
        return int(self.config.get("lifetimes", {}).get(name, default))

    def count(self, api: str, region: str | None) -> None:
        with self.lock:
            self.calls[api] = self.calls.get(api, 0) + 1
            if region:
                self.call_regions.setdefault(api, {})
                self.call_regions[api][region] = self.call_regions[api].get(region, 0) + 1

    def take_fault(self, api: str) -> Fault | None:
        with self.lock:
            queue = self.faults.get(api, [])
            while queue:
                fault = queue[0]
                if fault.remaining == 0:
                    queue.pop(0)
                    continue
                if fault.remaining > 0:
                    fault.remaining -= 1
                return fault
        return None

    # --- credentials
    def issue_sts(self, principal: str, duration: int) -> dict:
        now = time.time()
        ak = "STS.N" + secrets.token_hex(10)
        token = "CAIS" + base64.b64encode(secrets.token_bytes(48)).decode()
        secret = secrets.token_urlsafe(30)
        self.record_secret(secret)
        self.record_secret(token)
        expires = now + duration
        with self.lock:
            self.sts_tokens[token] = {
                "access_key_id": ak,
                "secret": secret,
                "expires": expires,
                "principal": principal,
            }
            self.sts_keys[ak] = token
        return {
            "AccessKeyId": ak,
            "AccessKeySecret": secret,
            "SecurityToken": token,
            "Expiration": iso(expires),
        }

    def caller(self, access_key_id: str | None, token: str | None) -> dict:
        """Who signed the request: {secret, principal, expires (None for AccessKeys)}."""
        if not access_key_id:
            raise CloudError(400, "MissingAccessKeyId", "AccessKeyId is mandatory for this action.")
        with self.lock:
            static = self.config.get("access_keys", {}).get(access_key_id)
            if static is not None:
                if token:
                    raise CloudError(400, "InvalidSecurityToken.MismatchWithAccessKey",
                                     "The SecurityToken does not belong to this AccessKeyId.")
                return {"secret": static["secret"], "principal": static.get("principal", f"user/{access_key_id}"),
                        "expires": None}
            issued_token = self.sts_keys.get(access_key_id)
            if issued_token is None:
                raise CloudError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
            if not token:
                raise CloudError(400, "InvalidSecurityToken.Missing",
                                 "An STS AccessKeyId was used without its SecurityToken.")
            entry = self.sts_tokens.get(token)
            if entry is None:
                raise CloudError(400, "InvalidSecurityToken.Malformed", "The SecurityToken is malformed.")
            if entry["access_key_id"] != access_key_id:
                raise CloudError(400, "InvalidSecurityToken.MismatchWithAccessKey",
                                 "The SecurityToken does not belong to this AccessKeyId.")
            if entry["expires"] <= time.time():
                raise CloudError(400, "InvalidSecurityToken.Expired", "Specified SecurityToken is expired.")
            return {"secret": entry["secret"], "principal": entry["principal"], "expires": entry["expires"]}

    def use_nonce(self, nonce: str) -> None:
        with self.lock:
            if nonce in self.nonces:
                raise CloudError(400, "SignatureNonceUsed", "The request signature nonce has been used.")
            self.nonces.add(nonce)

    def issue_registry_password(self, username: str, instance: str, caller: dict) -> tuple[str, float]:
        now = time.time()
        expires = now + self.lifetime("registry_seconds", 3600)
        if caller["expires"] is not None:
            expires = min(expires, caller["expires"])
        password = "reg-" + secrets.token_urlsafe(32)
        self.record_secret(password)
        with self.lock:
            self.registry_passwords[password] = {"username": username, "expires": expires, "instance": instance,
                                                 "principal": caller["principal"]}
        return password, expires


def check_timestamp(value: str | None) -> None:
    if not value:
        raise CloudError(400, "MissingTimestamp", "Timestamp is mandatory for this action.")
    try:
        ts = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise CloudError(400, "InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted.")
    if abs(time.time() - ts) > MAX_SKEW_SECONDS:
        raise CloudError(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")


class Handler(BaseHTTPRequestHandler):
    server_version = "fake-alibaba-cloud/1"
    protocol_version = "HTTP/1.1"

    @property
    def state(self) -> State:
        return self.server.state  # type: ignore[attr-defined]

    def log_message(self, fmt, *args):  # quiet unless asked
        if self.server.verbose:  # type: ignore[attr-defined]
            sys.stderr.write("fake-cloud: " + (fmt % args) + "\n")

    # --- plumbing
    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, status: int, body, extra_headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def send_text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, err: CloudError, roa: bool = False) -> None:
        request_id = str(uuid.uuid4()).upper()
        if roa:
            body = {"code": err.code, "message": err.message, "requestId": request_id}
        else:
            body = {"RequestId": request_id, "HostId": "fake-cloud", "Code": err.code, "Message": err.message}
        self.send_json(err.status, body)

    def apply_fault(self, api: str, roa: bool = False) -> bool:
        """Answers with an injected fault if one is queued for `api`; True when it did."""
        fault = self.state.take_fault(api)
        if fault is None:
            return False
        if fault.kind == "slow":
            time.sleep(fault.delay)
            return False
        if fault.kind == "timeout":
            time.sleep(fault.delay)
            self.close_connection = True
            return True
        if fault.kind == "malformed":
            self.send_json(200, b'{"RequestId": "MALFORMED", "Credentials": {')
            return True
        if fault.kind == "http500":
            self.send_error_json(CloudError(500, "InternalError", "The request processing has failed due to some unknown error."), roa)
            return True
        if fault.kind == "throttling":
            self.send_error_json(CloudError(400, "Throttling", "Request was denied due to request throttling."), roa)
            return True
        self.send_error_json(CloudError(fault.status, fault.code, fault.message), roa)
        return True

    def split_region(self) -> tuple[str | None, str, dict]:
        parsed = urllib.parse.urlsplit(self.path)
        path = parsed.path
        region = None
        m = re.match(r"^/r/([a-z0-9-]+)(/.*)?$", path)
        if m:
            region = m.group(1)
            path = m.group(2) or "/"
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        return region, path, query

    # --- HTTP verbs
    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def dispatch(self, method: str) -> None:
        try:
            region, path, query = self.split_region()
            body = self.read_body()
            if path.startswith("/_fake/"):
                return self.control(method, path, query, body)
            if path.startswith("/latest/"):
                return self.metadata(method, path)
            if path == "/tokens":
                return self.personal_token(method, region, query)
            if path == "/":
                params = dict(query)
                if body:
                    params.update(urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True))
                return self.rpc(method, region, params)
            self.send_error_json(CloudError(404, "InvalidAction.NotFound", f"No route for {path}."))
        except CloudError as err:
            self.send_error_json(err)
        except (BrokenPipeError, ConnectionResetError):
            pass

    # --- RPC
    def rpc(self, method: str, region: str | None, params: dict) -> None:
        action = params.get("Action", "")
        version = params.get("Version", "")
        handlers = {
            (STS_VERSION, "AssumeRole"): self.assume_role,
            (STS_VERSION, "AssumeRoleWithOIDC"): self.assume_role_with_oidc,
            (CR_VERSION, "GetAuthorizationToken"): self.cr_authorization_token,
            (CR_VERSION, "ListInstanceEndpoint"): self.cr_list_instance_endpoint,
        }
        handler = handlers.get((version, action))
        if handler is None:
            raise CloudError(404, "InvalidAction.NotFound", f"Specified api {action} ({version}) is not found.")
        self.state.count(action, region)
        if self.apply_fault(action):
            return
        try:
            body = handler(method, region, params)
        except CloudError as err:
            return self.send_error_json(err)
        body.setdefault("RequestId", str(uuid.uuid4()).upper())
        self.send_json(200, body)

    def authenticate_rpc(self, method: str, params: dict) -> dict:
        """Checks the common parameters and the signature; returns the caller."""
        if params.get("Format", "JSON").upper() != "JSON":
            raise CloudError(400, "InvalidParameter.Format", "The fake only speaks JSON.")
        if params.get("SignatureMethod") != "HMAC-SHA1" or params.get("SignatureVersion") != "1.0":
            raise CloudError(400, "InvalidSignatureMethod", "Only HMAC-SHA1 signature v1.0 is supported.")
        signature = params.get("Signature")
        if not signature:
            raise CloudError(400, "MissingSignature", "Signature is mandatory for this action.")
        caller = self.state.caller(params.get("AccessKeyId"), params.get("SecurityToken"))
        string_to_sign = rpc_string_to_sign(method, params)
        expected = hmac_sha1_b64(caller["secret"] + "&", string_to_sign)
        if not hmac.compare_digest(expected, signature):
            # Like the real service, echo the string the server signed: it contains the
            # SecurityToken, so clients must not show this message as it is.
            raise CloudError(400, "SignatureDoesNotMatch",
                             "Specified signature is not matched with our calculation. "
                             "server string to sign is:" + string_to_sign)
        check_timestamp(params.get("Timestamp"))
        nonce = params.get("SignatureNonce")
        if not nonce:
            raise CloudError(400, "MissingSignatureNonce", "SignatureNonce is mandatory for this action.")
        self.state.use_nonce(nonce)
        return caller

    def duration(self, params: dict, role: dict) -> int:
        raw = params.get("DurationSeconds", "3600")
        try:
            duration = int(raw)
        except ValueError:
            raise CloudError(400, "InvalidParameter.DurationSeconds", "The parameter DurationSeconds is wrongly formed.")
        max_session = int(role.get("max_session_seconds", 3600))
        if duration < 900 or duration > max_session:
            raise CloudError(400, "InvalidParameter.DurationSeconds",
                             f"The Min/Max value of DurationSeconds is 900/{max_session} seconds.")
        # The fake may issue shorter credentials than asked, so tests can watch them expire.
        override = self.state.config.get("lifetimes", {}).get("sts_seconds")
        return int(override) if override else duration

    def role(self, arn: str | None) -> dict:
        if not arn or not ARN_ROLE.match(arn):
            raise CloudError(400, "InvalidParameter.RoleArn", "The parameter RoleArn is wrongly formed.")
        role = self.state.config.get("roles", {}).get(arn)
        if role is None:
            raise CloudError(404, "EntityNotExist.Role", "The role not exists: " + arn)
        return role

    def session_name(self, params: dict) -> str:
        name = params.get("RoleSessionName", "")
        if not SESSION_NAME.match(name):
            raise CloudError(400, "InvalidParameter.RoleSessionName", "The parameter RoleSessionName is wrongly formed.")
        return name

    def assume_role(self, method: str, region: str | None, params: dict) -> dict:
        caller = self.authenticate_rpc(method, params)
        arn = params.get("RoleArn")
        role = self.role(arn)
        session = self.session_name(params)
        trusted = role.get("trusted_principals", ["*"])
        if "*" not in trusted and caller["principal"] not in trusted:
            raise CloudError(403, "NoPermission",
                             f"You are not authorized to do this action. You should be authorized by RAM.")
        duration = self.duration(params, role)
        creds = self.state.issue_sts(f"{arn}/{session}", duration)
        return {
            "AssumedRoleUser": {"Arn": f"{arn}/{session}", "AssumedRoleId": f"3{secrets.randbelow(10**17):017d}:{session}"},
            "Credentials": creds,
        }

    def assume_role_with_oidc(self, method: str, region: str | None, params: dict) -> dict:
        # Anonymous: no AccessKeyId, no signature.
        arn = params.get("RoleArn")
        role = self.role(arn)
        session = self.session_name(params)
        provider_arn = params.get("OIDCProviderArn", "")
        provider = self.state.config.get("oidc_providers", {}).get(provider_arn)
        if provider is None:
            raise CloudError(404, "EntityNotExist.OIDCProvider", "The OIDC provider does not exist.")
        trust = role.get("oidc_trust")
        if not trust or trust.get("provider_arn") != provider_arn:
            raise CloudError(403, "AuthenticationFail.NoPermission",
                             "The role does not trust this OIDC provider.")
        token = params.get("OIDCToken", "")
        self.state.record_secret(token)
        claims = verify_oidc_token(token, provider)
        subjects = trust.get("subjects", [])
        if subjects and claims.get("sub") not in subjects:
            raise CloudError(403, "AuthenticationFail.NoPermission",
                             "The OIDC token's subject is not trusted by the role.")
        duration = self.duration(params, role)
        creds = self.state.issue_sts(f"{arn}/{session}", duration)
        return {
            "AssumedRoleUser": {"Arn": f"{arn}/{session}", "AssumedRoleId": f"3{secrets.randbelow(10**17):017d}:{session}"},
            "OIDCTokenInfo": {"Subject": claims.get("sub"), "Issuer": claims.get("iss"),
                              "ClientIds": provider.get("audience", "sts.aliyuncs.com")},
            "Credentials": creds,
        }

    def instance(self, instance_id: str | None, region: str | None) -> dict:
        if not instance_id:
            raise CloudError(400, "MissingInstanceId", "InstanceId is mandatory for this action.")
        inst = self.state.config.get("instances", {}).get(instance_id)
        if inst is None or (region is not None and inst.get("region") != region):
            raise CloudError(404, "INSTANCE_NOT_EXIST", f"instance {instance_id} does not exist in this region")
        return inst

    def check_allowed(self, caller: dict, action: str) -> None:
        denied = self.state.config.get("denied_principals", {}).get(action, [])
        if caller["principal"] in denied or any(caller["principal"].startswith(d + "/") for d in denied):
            raise CloudError(403, "NoPermission", "You are not authorized to do this action.")

    def cr_authorization_token(self, method: str, region: str | None, params: dict) -> dict:
        caller = self.authenticate_rpc(method, params)
        self.check_allowed(caller, "GetAuthorizationToken")
        instance_id = params.get("InstanceId")
        self.instance(instance_id, region)
        username = "cr_temp_user"
        password, expires = self.state.issue_registry_password(username, instance_id, caller)
        return {
            "AuthorizationToken": password,
            "TempUsername": username,
            "ExpireTime": int(expires * 1000),
            "Code": "success",
            "IsSuccess": True,
        }

    def cr_list_instance_endpoint(self, method: str, region: str | None, params: dict) -> dict:
        caller = self.authenticate_rpc(method, params)
        self.check_allowed(caller, "ListInstanceEndpoint")
        inst = self.instance(params.get("InstanceId"), region)
        if params.get("ModuleName", "Registry") != "Registry":
            return {"Endpoints": [], "Code": "success", "IsSuccess": True}
        return {"Endpoints": copy.deepcopy(inst.get("endpoints", [])), "Code": "success", "IsSuccess": True}

    # --- ROA: Personal Edition
    def personal_token(self, method: str, region: str | None, query: dict) -> None:
        api = "GetPersonalAuthorizationToken"
        self.state.count(api, region)
        if self.apply_fault(api, roa=True):
            return
        try:
            headers = {k.lower(): v for k, v in self.headers.items()}
            auth = headers.get("authorization", "")
            m = re.match(r"^acs ([^:]+):(.+)$", auth)
            if not m:
                raise CloudError(400, "MissingAuthorization", "The Authorization header is missing or malformed.")
            access_key_id, signature = m.group(1), m.group(2)
            caller = self.state.caller(access_key_id, headers.get("x-acs-security-token"))
            signed_headers = {k: v for k, v in headers.items()
                              if k in ("accept", "content-md5", "content-type", "date") or k.startswith("x-acs-")}
            expected = hmac_sha1_b64(caller["secret"], roa_string_to_sign(method, signed_headers, "/tokens", query))
            if not hmac.compare_digest(expected, signature):
                raise CloudError(400, "SignatureDoesNotMatch", "Specified signature does not match our calculation.")
            try:
                date = parsedate_to_datetime(headers.get("date", "")).timestamp()
            except (TypeError, ValueError):
                raise CloudError(400, "InvalidTimeStamp.Format", "The Date header is not an RFC 1123 date.")
            if abs(time.time() - date) > MAX_SKEW_SECONDS:
                raise CloudError(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
            self.state.use_nonce(headers.get("x-acs-signature-nonce", ""))
            region_id = region or self.state.config.get("default_region", "cn-hangzhou")
            if region_id not in self.state.config.get("personal_regions", [region_id]):
                raise CloudError(404, "USER_NOT_EXIST", "The Personal Edition instance does not exist in this region.")
            self.check_allowed(caller, "GetAuthorizationToken")
            username = self.state.config.get("personal_username", "acr-user@1234567890123456")
            password, expires = self.state.issue_registry_password(username, f"personal/{region_id}", caller)
            self.send_json(200, {
                "data": {"authorizationToken": password, "tempUserName": username, "expireDate": int(expires * 1000)},
                "requestId": str(uuid.uuid4()).upper(),
            })
        except CloudError as err:
            self.send_error_json(err, roa=True)

    # --- ECS metadata
    def metadata(self, method: str, path: str) -> None:
        md = self.state.config.get("metadata", {})
        if path == "/latest/api/token":
            self.state.count("MetadataToken", None)
            if method != "PUT":
                return self.send_text(405, "method not allowed")
            if self.apply_fault("MetadataToken"):
                return
            if not md.get("hardened_supported", True):
                return self.send_text(404, "Not Found")
            try:
                ttl = int(self.headers.get("X-aliyun-ecs-metadata-token-ttl-seconds", ""))
            except ValueError:
                return self.send_text(400, "X-aliyun-ecs-metadata-token-ttl-seconds is required")
            if ttl < 1 or ttl > 21600:
                return self.send_text(400, "X-aliyun-ecs-metadata-token-ttl-seconds must be 1..21600")
            token = secrets.token_urlsafe(24)
            with self.state.lock:
                self.state.metadata_tokens[token] = time.time() + ttl
            return self.send_text(200, token)
        if method != "GET":
            return self.send_text(405, "method not allowed")
        token = self.headers.get("X-aliyun-ecs-metadata-token")
        if token is not None:
            with self.state.lock:
                expires = self.state.metadata_tokens.get(token)
            if expires is None or expires <= time.time():
                return self.send_text(401, "Unauthorized")
        elif md.get("require_token", False):
            return self.send_text(401, "Unauthorized")
        if path == "/latest/meta-data/region-id":
            self.state.count("MetadataRegion", None)
            if self.apply_fault("MetadataRegion"):
                return
            return self.send_text(200, md.get("region", "cn-hangzhou"))
        prefix = "/latest/meta-data/ram/security-credentials/"
        if path == prefix:
            self.state.count("MetadataRoleName", None)
            if self.apply_fault("MetadataRoleName"):
                return
            role = md.get("role")
            return self.send_text(200, role) if role else self.send_text(404, "Not Found")
        if path.startswith(prefix):
            self.state.count("MetadataCredentials", None)
            if self.apply_fault("MetadataCredentials"):
                return
            name = path[len(prefix):]
            if name != md.get("role"):
                return self.send_text(404, "Not Found")
            creds = self.state.issue_sts(f"worker-role/{name}", self.state.lifetime("metadata_seconds", 3600))
            body = dict(creds, LastUpdated=iso(time.time()), Code="Success")
            return self.send_json(200, body)
        self.send_text(404, "Not Found")

    # --- control API
    def control(self, method: str, path: str, query: dict, body: bytes) -> None:
        st = self.state
        payload = json.loads(body) if body else {}
        if path == "/_fake/calls":
            with st.lock:
                if method == "POST":  # reset
                    st.calls = {api: 0 for api in APIS}
                    st.call_regions = {}
                return self.send_json(200, {"calls": dict(st.calls), "regions": copy.deepcopy(st.call_regions)})
        if path == "/_fake/faults":
            with st.lock:
                if method == "POST":
                    st.faults.setdefault(payload["api"], []).append(Fault(payload))
                elif method == "PUT":  # clear all
                    st.faults = {}
                summary = {api: [{"kind": f.kind, "remaining": f.remaining} for f in q] for api, q in st.faults.items()}
            return self.send_json(200, summary)
        if path == "/_fake/config":
            with st.lock:
                if method == "POST":  # shallow merge of top-level keys
                    st.config.update(payload)
                    st.record_config_secrets(payload)
                return self.send_json(200, st.config)
        if path == "/_fake/mint-sts":
            # Credentials for a principal, as ACK's managed-role token would carry.
            creds = st.issue_sts(payload.get("principal", "managed-role"), int(payload.get("seconds", 3600)))
            return self.send_json(200, creds)
        if path == "/_fake/expire-sts":
            # Expire every issued SecurityToken now (tests of expiry handling).
            with st.lock:
                for entry in st.sts_tokens.values():
                    entry["expires"] = min(entry["expires"], time.time())
            return self.send_json(200, {"expired": True})
        if path == "/_fake/registry-login":
            # Would a registry accept this username/password now? The password is only compared.
            with st.lock:
                entry = st.registry_passwords.get(payload.get("password", ""))
            if entry is None:
                return self.send_json(200, {"valid": False, "reason": "unknown"})
            if entry["username"] != payload.get("username"):
                return self.send_json(200, {"valid": False, "reason": "username"})
            if entry["expires"] <= time.time():
                return self.send_json(200, {"valid": False, "reason": "expired"})
            return self.send_json(200, {"valid": True, "instance": entry["instance"],
                                        "principal": entry["principal"],
                                        "expires_ms": int(entry["expires"] * 1000)})
        self.send_text(404, "no such control endpoint")


_jwks_cache: dict[str, tuple[float, dict]] = {}
_jwks_lock = threading.Lock()


def fetch_jwks(provider: dict) -> dict:
    url = provider["jwks_url"]
    with _jwks_lock:
        cached = _jwks_cache.get(url)
        if cached and cached[0] > time.time():
            return cached[1]
    ctx = ssl.create_default_context(cafile=provider.get("ca_file")) if url.startswith("https") else None
    with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:  # noqa: S310 (loopback only)
        jwks = json.load(resp)
    with _jwks_lock:
        _jwks_cache[url] = (time.time() + 60, jwks)
    return jwks


def verify_oidc_token(token: str, provider: dict) -> dict:
    import jwt  # PyJWT, installed in the project's virtual environment

    if not token:
        raise CloudError(400, "MissingOIDCToken", "OIDCToken is mandatory for this action.")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise CloudError(400, "InvalidParameter.OIDCToken", "The OIDC token is malformed.")
    try:
        jwks = fetch_jwks(provider)
    except OSError as err:
        raise CloudError(500, "InternalError", f"cannot fetch the provider's JWKS: {err}")
    key = None
    for jwk in jwks.get("keys", []):
        if jwk.get("kid") == header.get("kid"):
            key = jwt.PyJWK(jwk).key
    if key is None:
        raise CloudError(400, "AuthenticationFail.OIDCToken.InvalidKid", "No key of the provider matches the token.")
    try:
        return jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=provider.get("audience", "sts.aliyuncs.com"),
            issuer=provider["issuer"],
            options={"require": ["exp", "iss", "sub", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise CloudError(400, "AuthenticationFail.OIDCToken.Expired", "The OIDC token has expired.")
    except jwt.InvalidAudienceError:
        raise CloudError(400, "AuthenticationFail.OIDCToken.InvalidAudience", "The OIDC token's audience is not trusted.")
    except jwt.InvalidIssuerError:
        raise CloudError(400, "AuthenticationFail.OIDCToken.InvalidIssuer", "The OIDC token's issuer does not match the provider.")
    except jwt.PyJWTError as err:
        raise CloudError(400, "AuthenticationFail.OIDCToken.Invalid", f"The OIDC token is invalid: {type(err).__name__}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="JSON configuration file")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    ap.add_argument("--port-file", help="write the chosen port here once listening")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args()
    with open(args.config, encoding="utf-8") as f:
        config = json.load(f)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.state = State(config)  # type: ignore[attr-defined]
    server.verbose = args.verbose  # type: ignore[attr-defined]
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(str(port))
        import os

        os.replace(tmp, args.port_file)
    print(f"fake-cloud listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
