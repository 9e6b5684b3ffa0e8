"""A local SMTP sink for the notice-mail tests: accepts every message on 127.0.0.1 and saves
each one, as received (RFC 5322 bytes), to a file in the directory given.

    python3 smtp_sink.py DIR

Prints the port it listens on (one line) once it accepts connections, then runs until killed
or until its standard input closes (so a test that dies leaves no server behind).
"""

import os
import socket
import sys
import threading
import uuid

from aiosmtpd.controller import Controller


class Save:
    def __init__(self, directory):
        self.directory = directory

    async def handle_DATA(self, server, session, envelope):
        name = uuid.uuid4().hex
        tmp = os.path.join(self.directory, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b"X-Envelope-To: " + ", ".join(envelope.rcpt_tos).encode() + b"\r\n")
            f.write(envelope.original_content or envelope.content)
        # Whole files only: a reader never sees half a message.
        os.rename(tmp, os.path.join(self.directory, name + ".eml"))
        return "250 Message accepted"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    directory = sys.argv[1]
    port = free_port()
    controller = Controller(Save(directory), hostname="127.0.0.1", port=port)
    controller.start()
    print(port, flush=True)
    done = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait()
    controller.stop()


if __name__ == "__main__":
    main()
