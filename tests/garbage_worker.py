#!/usr/bin/python3
"""A worker impostor for tests: connects to front's socket like a worker, reads Init, then
sends bytes that are not a valid frame. Front must kill it and tell its clients."""
import os, socket, sys, time

path = sys.argv[sys.argv.index("--socket") + 1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
init = s.recv(65536)  # Init: u32 length, u16 protocol version, body
version = int.from_bytes(init[4:6], "big")  # speak front's version, whatever it is now


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


s.sendall(frame(b"\x00" + varint(os.getpid())))  # ToFront::Ready { pid }: a good start
time.sleep(1.0)  # long enough for the test to see this process alive
s.sendall(frame(b"\xff\xff\xff"))  # right version, undecodable body
time.sleep(30)  # front must kill us long before this
