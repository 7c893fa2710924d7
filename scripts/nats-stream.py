# The BITES stream of scripts/bench-compare's private NATS, over the raw NATS protocol (no
# client library needed): `create` makes it (subjects bite and store), `info` prints its state.
import socket, sys, json, time
cmd = sys.argv[1]
s = socket.create_connection(("127.0.0.1", 4222), timeout=3)
s.recv(4096)
if cmd == "create":
    body = json.dumps({"name": "BITES", "subjects": ["bite", "store"], "storage": "file"}).encode()
    subj = b"$JS.API.STREAM.CREATE.BITES"
else:
    body = b""
    subj = b"$JS.API.STREAM.INFO.BITES"
s.sendall(b'CONNECT {"verbose":false}\r\nSUB r 1\r\nPUB ' + subj + b" r %d\r\n" % len(body) + body + b"\r\nPING\r\n")
buf = b""
end = time.time() + 3
while time.time() < end and b"MSG r" not in buf or (b"MSG r" in buf and not buf.rstrip().endswith(b"}")):
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        break
    if not chunk:
        break
    buf += chunk
i = buf.find(b"{", buf.find(b"MSG r"))
reply = json.loads(buf[i:buf.find(b"\r\n", i)])
if "error" in reply:
    print("error", reply["error"]); sys.exit(1)
print(json.dumps(reply.get("state", "created")))
