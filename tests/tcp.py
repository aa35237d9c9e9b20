#!/usr/bin/python3
"""Raw TCP client for tests: tcp.py HOST PORT [--timeout S] [--chunks]

Sends stdin's bytes in one write (the default) and prints all bytes read back
until the peer closes the connection or the timeout passes (then exit code 2).
--chunks: split stdin on the marker line '--PAUSE--\\n' and send each part
separately, 0.1 s apart (for requests split across packets).
The write side stays open (an HTTP server may treat EOF as an abort).
"""
import socket, sys, time


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    args = sys.argv[3:]
    timeout = 5.0
    if '--timeout' in args:
        timeout = float(args[args.index('--timeout') + 1])
    data = sys.stdin.buffer.read()
    s = socket.create_connection((host, port), timeout=timeout)
    if '--chunks' in args:
        for part in data.split(b'--PAUSE--\n'):
            s.sendall(part)
            time.sleep(0.1)
    else:
        s.sendall(data)
    end = time.monotonic() + timeout
    got = bytearray()
    rc = 0
    while True:
        left = end - time.monotonic()
        if left <= 0:
            rc = 2
            break
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except socket.timeout:
            rc = 2
            break
        except ConnectionResetError:
            break
        if not d:
            break
        got += d
    sys.stdout.buffer.write(bytes(got))
    sys.stdout.flush()
    sys.exit(rc)


if __name__ == '__main__':
    main()
