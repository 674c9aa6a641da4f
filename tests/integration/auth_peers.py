"""Peers for the authentication tests (twisted.web): `python auth_peers.py MODE [options]`.

Each one listens on 127.0.0.1 on a port the kernel picks, prints `PORT <n>` on stdout once it
accepts connections, and serves until it is killed. Modes:

- files DIR: serves the files of DIR (a JWKS document the test rewrites to rotate keys);
  `/hits/NAME` answers how many times NAME was asked for.
- forward-auth: an auth service for forward auth. `/verify` decides by the Authorization
  field: `Bearer good-USER` is 200 with `X-Auth-User: USER`, `X-Auth-Groups: staff` and
  `X-Auth-Uri` / `X-Auth-Method` / `X-Auth-For` echoing the X-Forwarded-Uri, -Method and
  -For it got; `Bearer bad` is 401 with `WWW-Authenticate: Bearer realm="gate"`, a JSON body
  and an `X-Internal` field proxyd must not pass; no Authorization is 302 to
  `/login?rd=<X-Forwarded-Uri>`. `/slow` never answers. `/hits` counts the /verify calls.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from urllib.parse import quote

from twisted.internet import reactor
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.static import File

hits: collections.Counter[str] = collections.Counter()


class Counted(File):
    def render_GET(self, request: server.Request) -> bytes | int:
        hits[self.basename()] += 1
        return super().render_GET(request)


class Hits(Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        name = request.postpath[0].decode() if request.postpath else "verify"
        return str(hits[name]).encode()


class Verify(Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        hits["verify"] += 1
        authorization = (request.getHeader("authorization") or "").strip()
        uri = request.getHeader("x-forwarded-uri") or ""
        if authorization.startswith("Bearer good-"):
            request.setResponseCode(200)
            request.setHeader("X-Auth-User", authorization.removeprefix("Bearer good-"))
            request.setHeader("X-Auth-Groups", "staff")
            request.setHeader("X-Auth-Uri", uri)
            request.setHeader("X-Auth-Method", request.getHeader("x-forwarded-method") or "")
            request.setHeader("X-Auth-For", request.getHeader("x-forwarded-for") or "")
            return b""
        if authorization:
            request.setResponseCode(401)
            request.setHeader("WWW-Authenticate", 'Bearer realm="gate"')
            request.setHeader("Content-Type", "application/json")
            request.setHeader("X-Internal", "auth-node-7")
            return json.dumps({"error": "bad token"}).encode()
        request.setResponseCode(302)
        request.setHeader("Location", "/login?rd=" + quote(uri, safe=""))
        return b""


class Slow(Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> int:
        return server.NOT_DONE_YET


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["files", "forward-auth"])
    parser.add_argument("directory", nargs="?", default=".")
    args = parser.parse_args(argv)
    root: Resource
    if args.mode == "files":
        root = Counted(args.directory)
        root.childNotFound = Resource()
        root.putChild(b"hits", Hits())
    else:
        root = Resource()
        root.putChild(b"verify", Verify())
        root.putChild(b"slow", Slow())
        root.putChild(b"hits", Hits())
    site = server.Site(root)
    site.displayTracebacks = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
