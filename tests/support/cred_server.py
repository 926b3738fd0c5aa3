#!/usr/bin/env python3
"""Loopback stand-in for the AWS credential endpoints, for tests/integ/test_aws.c.

Usage: cred_server.py PORTFILE. Listens on 127.0.0.1 (a free port, written to PORTFILE) and
serves, checking the headers the real services require:
  PUT  /latest/api/token                               IMDSv2 token (needs the TTL header)
  GET  /latest/meta-data/iam/security-credentials/     role name (needs the token header)
  GET  /latest/meta-data/iam/security-credentials/ROLE credentials JSON
  GET  /container/creds[?exp=S]                         container credentials (needs
                                                        Authorization: Bearer container-secret)
  POST /sts/                                            STS AssumeRoleWithWebIdentity (XML)
  GET  /stats                                           request counts per endpoint (JSON)
Each credential reply has a fresh AccessKeyId (a counter) and expires in ?exp= seconds
(default 3600). Nothing is logged.
"""
import datetime
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

IMDS_TOKEN = "imds-token-1"
CONTAINER_AUTH = "Bearer container-secret"
WEB_TOKEN = "web-identity-token"
ROLE = "test-role"

lock = threading.Lock()
counts = {}
serial = [0]


def bump(name):
    with lock:
        counts[name] = counts.get(name, 0) + 1
        serial[0] += 1
        return serial[0]


def expiry(seconds):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, body, ctype="text/plain"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def creds_json(self, prefix, exp):
        n = bump(prefix)
        return json.dumps({"Code": "Success", "Type": "AWS-HMAC",
                           "AccessKeyId": "%s%04d" % (prefix, n),
                           "SecretAccessKey": "secret-%d" % n, "Token": "token-%d" % n,
                           "Expiration": expiry(exp)})

    def do_PUT(self):
        if self.path != "/latest/api/token":
            return self.reply(404, "not found")
        if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self.reply(400, "missing ttl")
        bump("imds_token")
        self.reply(200, IMDS_TOKEN)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(url.query)
        exp = int(q.get("exp", ["3600"])[0])
        base = "/latest/meta-data/iam/security-credentials/"
        if url.path == "/stats":
            with lock:
                return self.reply(200, json.dumps(counts), "application/json")
        if url.path.startswith(base):
            if self.headers.get("X-aws-ec2-metadata-token") != IMDS_TOKEN:
                bump("imds_unauthorized")
                return self.reply(401, "")
            if url.path == base:
                return self.reply(200, ROLE + "\n")
            if url.path == base + ROLE:
                return self.reply(200, self.creds_json("ASIAIMDS", exp), "application/json")
            return self.reply(404, "")
        if url.path == "/container/creds":
            if self.headers.get("Authorization") != CONTAINER_AUTH:
                bump("container_unauthorized")
                return self.reply(403, json.dumps({"message": "unauthorized"}))
            return self.reply(200, self.creds_json("ASIACONT", exp), "application/json")
        self.reply(404, "not found")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(n).decode())
        if self.path.split("?")[0] != "/sts/":
            return self.reply(404, "")
        ok = (form.get("Action") == ["AssumeRoleWithWebIdentity"]
              and form.get("WebIdentityToken") == [WEB_TOKEN] and form.get("RoleArn"))
        if not ok:
            bump("sts_denied")
            return self.reply(403, "<ErrorResponse><Error><Code>AccessDenied</Code>"
                                   "<Message>no</Message></Error></ErrorResponse>", "text/xml")
        i = bump("ASIAWEB")
        self.reply(200, """<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult>
<Credentials><AccessKeyId>ASIAWEB%04d</AccessKeyId><SecretAccessKey>web-secret-%d</SecretAccessKey>
<SessionToken>web-token-%d&amp;x</SessionToken><Expiration>%s</Expiration></Credentials>
</AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>""" % (i, i, i, expiry(3600)),
                   "text/xml")


def main():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.rename(tmp, sys.argv[1])
    srv.serve_forever()


if __name__ == "__main__":
    main()
