#!/usr/bin/env python3
"""Captures the TLS ClientHello a client sends, as one hex line on stdout.

The fixtures beside this script were made with (OpenSSL 3.0, curl 7.88):

  ./capture-client-hello.py openssl s_client -connect 127.0.0.1:PORT -servername api.test > openssl-tls13-api.test.hex
  ./capture-client-hello.py openssl s_client -connect 127.0.0.1:PORT -servername API.Test -tls1_2 > openssl-tls12-API.Test.hex
  ./capture-client-hello.py openssl s_client -connect 127.0.0.1:PORT -noservername > openssl-no-sni.hex
  ./capture-client-hello.py curl -sk --resolve api.test:PORT:127.0.0.1 https://api.test:PORT/ > curl-api.test.hex

PORT is replaced by the port of a loopback listener that reads what the
client sends (never answers) for a second, then stops the client.
"""
import socket
import subprocess
import sys

s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
port = s.getsockname()[1]
cmd = [a.replace("PORT", str(port)) for a in sys.argv[1:]]
p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
c, _ = s.accept()
c.settimeout(1.0)
data = b""
try:
    while True:
        d = c.recv(65536)
        if not d:
            break
        data += d
except OSError:
    pass
p.kill()
print(data.hex())
