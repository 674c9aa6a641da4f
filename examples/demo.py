"""`make run`: start the bundled demo backends, then proxyd in the foreground in front of them.

Ctrl-C stops proxyd and the backends.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)

TRY = """
proxyd is starting on {config}. Try, in another terminal:
    echo hello | curl -sN --max-time 1 telnet://127.0.0.1:7000   # TCP relay -> echo 9001/9002
    .venv/bin/proxyd check {config}              # validate the configuration
Stop with Ctrl-C.
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="etc/proxyd.ini")
    args = parser.parse_args()
    backends = [
        subprocess.Popen([sys.executable, os.path.join(HERE, "echo_server.py"), "9001", "9002"]),
    ]
    print(TRY.format(config=args.config), flush=True)
    twistd = [os.path.join(BIN, "twistd"), "-n", "--pidfile", "", "proxyd", "--config", args.config]
    try:
        return subprocess.call(twistd)
    except KeyboardInterrupt:
        return 0
    finally:
        for backend in backends:
            backend.terminate()
            backend.wait()


if __name__ == "__main__":
    sys.exit(main())
