"""`make run`'s ACME certificate authority: Debian's pebble on 127.0.0.1:14000, whose validator
asks a dnsmasq on 127.0.0.1:9653 that resolves every name under `demo.test` to 127.0.0.1, and
validates http-01 on proxyd's [http web] (8080) and tls-alpn-01 on [https acme-demo] (8444).

pebble serves its directory with the public DEMO certificate of etc/demo-tls/ (never use it
elsewhere); its issuing root is new at every start: https://localhost:15000/roots/0.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess

DIRECTORY_PORT = 14000
MANAGEMENT_PORT = 15000
DNS_PORT = 9653
HTTP_01_PORT = 8080  # etc/proxyd.ini's [http web]
TLS_ALPN_01_PORT = 8444  # etc/proxyd.ini's [https acme-demo]
PORTS = (DNS_PORT, DIRECTORY_PORT)


def start(run_dir: str, certificate: str) -> list[subprocess.Popen[bytes]]:
    """Start dnsmasq and pebble (both or neither: nothing when either is missing); the
    processes started, listening on PORTS in the same order."""
    pebble = shutil.which("pebble")
    dnsmasq = shutil.which("dnsmasq", path="/usr/sbin:/usr/bin:/sbin")
    if pebble is None or dnsmasq is None:
        return []
    os.makedirs(run_dir, exist_ok=True)
    dns_conf = os.path.join(run_dir, "acme-dnsmasq.conf")
    with open(dns_conf, "w", encoding="ascii") as out:
        out.write("no-resolv\nno-hosts\nbind-interfaces\nlisten-address=127.0.0.1\n")
        out.write("address=/demo.test/127.0.0.1\n")
        # SRV records for the [pool echo-srv] demo (docs/discovery.md): the echo server on
        # 9001 at priority 10, weight 2; the one on 9002 at priority 20, its backup.
        out.write("local-ttl=5\n")
        out.write("srv-host=_echo._tcp.echo.demo.test,echo1.demo.test,9001,10,2\n")
        out.write("srv-host=_echo._tcp.echo.demo.test,echo2.demo.test,9002,20,1\n")
    pebble_conf = os.path.join(run_dir, "pebble.json")
    settings = {
        "listenAddress": f"127.0.0.1:{DIRECTORY_PORT}",
        "managementListenAddress": f"127.0.0.1:{MANAGEMENT_PORT}",
        "certificate": certificate,
        "privateKey": certificate,  # the demo file holds the certificate, then its key
        "httpPort": HTTP_01_PORT,
        "tlsPort": TLS_ALPN_01_PORT,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    with open(pebble_conf, "w", encoding="ascii") as out:
        json.dump({"pebble": settings}, out)
    user = pwd.getpwuid(os.geteuid()).pw_name
    dns = [dnsmasq, "-k", "-C", dns_conf, "-p", str(DNS_PORT), "--pid-file=", f"--user={user}"]
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    quiet = subprocess.DEVNULL
    return [
        subprocess.Popen([*dns, "--log-facility=/dev/null"], stdout=quiet, stderr=quiet),
        subprocess.Popen(
            [pebble, "-config", pebble_conf, "-dnsserver", f"127.0.0.1:{DNS_PORT}"],
            env=env,
            stdout=quiet,
            stderr=quiet,
        ),
    ]
