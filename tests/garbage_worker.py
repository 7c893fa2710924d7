#!/usr/bin/python3
"""A worker impostor for tests: connects to front's worker socket like a fresh worker, says
Hello, reads Init, says Ready, then sends bytes that are not a valid frame. Front must kill
it and tell its clients. The test passes front's protocol version in BEEP_TEST_PROTOCOL."""
import os, socket, sys, time

arg = lambda name: sys.argv[sys.argv.index(name) + 1]
path, conversation, generation = arg("--front-socket"), arg("--conversation"), int(arg("--generation"))
version = int(os.environ["BEEP_TEST_PROTOCOL"])


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def frame(body):  # u32 length, u16 protocol version, postcard body
    return (len(body) + 2).to_bytes(4, "big") + version.to_bytes(2, "big") + body


s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
name = conversation.encode()
# ToFront::Hello { conversation, generation, pid, adopted: None }: variant 0.
s.sendall(frame(b"\x00" + varint(len(name)) + name + varint(generation) + varint(os.getpid()) + b"\x00"))
s.recv(65536)  # Init
s.sendall(frame(b"\x01" + varint(os.getpid())))  # ToFront::Ready { pid }: a good start
time.sleep(1.0)  # long enough for the test to see this process alive
s.sendall(frame(b"\xff\xff\xff"))  # right version, undecodable body
time.sleep(30)  # front must kill us long before this
