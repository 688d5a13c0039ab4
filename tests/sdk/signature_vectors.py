"""Computes signature vectors with Alibaba Cloud's official Python SDKs.

Prints JSON: the vectors the Rust signer's unit tests hold (tests/data/signature-vectors.json).
`tests/sdk_vectors.rs` runs this and fails when the stored file and the SDK disagree, so the stored
vectors cannot drift from the SDK.

RPC vectors are computed by both alibabacloud-openapi-util (the Tea SDKs' signer) and
aliyun-python-sdk-core (the classic SDK's signer); the script fails if the two disagree.
"""
import json
import sys

from alibabacloud_openapi_util.client import Client as OpenApiUtil
from aliyunsdkcore.auth.composer import rpc_signature_composer
from Tea.request import TeaRequest

AK = "LTAI5tTestAccessKeyId"
SECRET = "Test/Secret+With=Chars"
STS_TOKEN = "CAIS+test/security==token*~"


def rpc_common(action, version, nonce, timestamp, token=None):
    params = {
        "Action": action,
        "Version": version,
        "Format": "JSON",
        "AccessKeyId": AK,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureNonce": nonce,
        "Timestamp": timestamp,
    }
    if token is not None:
        params["SecurityToken"] = token
    return params


def core_rpc_signature(params, method, secret):
    # aliyun-python-sdk-core's composer takes the parameters it signs from its arguments; it adds
    # nothing when they are already present.
    string_to_sign = getattr(rpc_signature_composer, "__compose_string_to_sign")(method, dict(params))
    return getattr(rpc_signature_composer, "__get_signature")(string_to_sign, secret)


def rpc_vector(name, method, secret, params):
    sig = OpenApiUtil.get_rpcsignature(dict(params), method, secret)
    core = core_rpc_signature(params, method, secret)
    if sig != core:
        sys.exit(f"{name}: alibabacloud-openapi-util says {sig}, aliyun-python-sdk-core says {core}")
    return {"name": name, "method": method, "secret": secret, "params": params, "signature": sig}


def roa_vector(name, method, secret, resource, headers, query):
    req = TeaRequest()
    req.method = method
    req.pathname = resource
    req.headers = dict(headers)
    req.query = dict(query)
    string_to_sign = OpenApiUtil.get_string_to_sign(req)
    return {
        "name": name,
        "method": method,
        "secret": secret,
        "resource": resource,
        "headers": headers,
        "query": query,
        "string_to_sign": string_to_sign,
        "signature": OpenApiUtil.get_roasignature(string_to_sign, secret),
    }


def roa_headers(token=None):
    h = {
        "date": "Sun, 22 Nov 2026 10:00:00 GMT",
        "accept": "application/json",
        "x-acs-signature-nonce": "0c4a4b0e-6a33-4b8c-9d5e-1f2e3d4c5b6a",
        "x-acs-signature-method": "HMAC-SHA1",
        "x-acs-signature-version": "1.0",
        "x-acs-version": "2016-06-07",
        "x-acs-action": "GetAuthorizationToken",
    }
    if token is not None:
        h["x-acs-security-token"] = token
    return h


def main():
    ts = "2026-11-22T10:00:00Z"
    rpc = [
        rpc_vector(
            "ecs-published",
            "GET",
            "testsecret",
            {
                "AccessKeyId": "testid",
                "Action": "DescribeRegions",
                "Format": "XML",
                "SignatureMethod": "HMAC-SHA1",
                "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
                "SignatureVersion": "1.0",
                "Timestamp": "2016-02-23T12:46:24Z",
                "Version": "2014-05-26",
            },
        ),
        rpc_vector(
            "cr-post-get-authorization-token",
            "POST",
            SECRET,
            {**rpc_common("GetAuthorizationToken", "2018-12-01", "5f1d2c3b-aaaa-4bbb-8ccc-0123456789ab", ts),
             "InstanceId": "cri-testinstance01"},
        ),
        rpc_vector(
            "sts-assume-role-with-security-token",
            "POST",
            SECRET,
            {**rpc_common("AssumeRole", "2015-04-01", "9a8b7c6d-1111-4222-8333-abcdefabcdef", ts, STS_TOKEN),
             "RoleArn": "acs:ram::1234567890123456:role/acr-puller",
             "RoleSessionName": "aliyun-acr-credential-helper",
             "DurationSeconds": "3600"},
        ),
        rpc_vector(
            "special-characters",
            "GET",
            "s3cr+t/=*~ é:",
            {**rpc_common("ListInstanceEndpoint", "2018-12-01", "nonce with space", ts),
             "InstanceId": "cri-a+b/c=d*e~f g",
             "ModuleName": "Registry",
             "Note": "café: déjà vu",
             "Zeta*Key~": "a:b"},
        ),
    ]
    roa = [
        roa_vector("personal-get-tokens", "GET", SECRET, "/tokens", roa_headers(), {}),
        roa_vector("personal-get-tokens-sts", "GET", SECRET, "/tokens", roa_headers(STS_TOKEN), {}),
        roa_vector(
            "roa-with-query",
            "GET",
            "s3cr+t/=*~ é:",
            "/tokens",
            roa_headers(),
            {"b": "2", "a": "x y", "empty": "", "c": "é:"},
        ),
    ]
    json.dump({"rpc": rpc, "roa": roa}, sys.stdout, indent=2, ensure_ascii=False, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
