"""The ASGI worker's TCP connections (digitorn_site.cli.asgi_worker.SendSoonServer) send their writes
from one loop callback instead of registering the socket with the reactor, and leave everything else
(a full socket, a slow client, a close) to Twisted.

Each case runs a real asyncio reactor (as under daphne) in a child process, with real sockets: a
server whose connections are SendSoonServer and a client on the same loop."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    r"""
    import asyncio, json, socket, sys

    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import protocol, reactor, tcp
    from zope.interface import implementer
    from twisted.internet.interfaces import IPushProducer

    from digitorn_site.cli.asgi_worker import SendSoonServer

    tcp.Port.transport = SendSoonServer
    case = sys.argv[1]
    out = {}
    server = {}

    @implementer(IPushProducer)
    class Producer:
        def __init__(self):
            self.paused = 0
            self.resumed = 0

        def pauseProducing(self):
            self.paused += 1

        def resumeProducing(self):
            self.resumed += 1

        def stopProducing(self):
            pass

    class Server(protocol.Protocol):
        def connectionMade(self):
            server["transport"] = self.transport
            server["lost"] = loop.create_future()

        def connectionLost(self, reason):
            if not server["lost"].done():
                server["lost"].set_result(reason.type.__name__)

    if case == "tls":
        # daphne's ssl: endpoint: Twisted's TLS protocol on top of the TCP connection, which then
        # carries ciphertext through the same write path.
        import ssl as pyssl

        from twisted.internet import ssl

        key = ssl.KeyPair.generate(size=2048)
        cert = key.selfSignedCert(1, CN="localhost")
        port = reactor.listenSSL(0, protocol.Factory.forProtocol(Server), cert.options(), interface="127.0.0.1")
        client_tls = pyssl.create_default_context()
        client_tls.check_hostname = False
        client_tls.verify_mode = pyssl.CERT_NONE
    else:
        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface="127.0.0.1")
        client_tls = None

    async def read_all(reader):
        chunks = []
        try:
            while chunk := await reader.read(1 << 16):
                chunks.append(chunk)
        except ConnectionResetError:  # an aborted connection ends with a reset
            chunks.append(b"<reset>")
        return b"".join(chunks)

    async def connect():
        reader, writer = await asyncio.open_connection("127.0.0.1", port.getHost().port, ssl=client_tls)
        while "transport" not in server:
            await asyncio.sleep(0)
        return reader, writer, server["transport"]

    async def main():
        reader, writer, t = await connect()
        out["class"] = type(t).__name__
        if case == "one_tick":
            # Writes of one pass of the loop: no writer registered, one send after the pass.
            t.write(b"event: a\n\n")
            t.writeSequence([b"event: ", b"b\n\n"])
            t.write(b"")
            out["registered_after_write"] = t in reactor.getWriters()
            out["pending"] = t._tempDataLen
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            out["registered_after_send"] = t in reactor.getWriters()
            out["buffered_after_send"] = len(t.dataBuffer) + t._tempDataLen
            t.write(b"event: c\n\n")
            t.loseConnection()
            out["received"] = (await read_all(reader)).decode()
            out["lost"] = await server["lost"]
        elif case == "tls":
            tcp_transport = t.transport  # under the TLS protocol
            out["class"] = type(tcp_transport).__name__
            t.write(b"event: a\n\n")
            t.writeSequence([b"event: ", b"b\n\n"])
            await asyncio.sleep(0.05)
            out["registered_after_send"] = tcp_transport in reactor.getWriters()
            t.write(b"event: c\n\n")
            t.loseConnection()
            out["received"] = (await read_all(reader)).decode()
            out["lost"] = await server["lost"]
        elif case == "slow_client":
            # A client that does not read: what the socket does not take is Twisted's buffer, the
            # producer is paused as Twisted pauses it, and everything arrives, in order, once read.
            producer = Producer()
            t.registerProducer(producer, True)
            chunk = bytes(range(256)) * 256  # 64 KiB
            sent = 0
            for i in range(64):  # 4 MiB: more than the kernel's buffers on loopback
                t.write(bytes([i]) + chunk)
                sent += 1 + len(chunk)
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            out["paused"] = producer.paused
            out["registered_while_full"] = t in reactor.getWriters()
            out["buffered_while_full"] = len(t.dataBuffer) - t.offset + t._tempDataLen
            t.unregisterProducer()
            t.loseConnection()
            data = await read_all(reader)
            out["complete"] = len(data) == sent and all(
                data[i * (1 + len(chunk))] == i for i in range(64)
            )
            out["lost"] = await server["lost"]
        elif case == "peer_gone":
            # The client resets the connection: writes after that neither raise nor hang.
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.transport.abort()
            await asyncio.sleep(0.05)
            for _ in range(5):
                t.write(b"x" * 1000)
                await asyncio.sleep(0.01)
            out["lost"] = await asyncio.wait_for(server["lost"], 5)
        elif case == "abort":
            # abortConnection in the same pass as a write: nothing is sent.
            t.write(b"never")
            t.abortConnection()
            out["received"] = (await read_all(reader)).decode()
            out["lost"] = await server["lost"]
        port.stopListening()
        print(json.dumps(out))

    loop.run_until_complete(main())
    """
)


def _run(case: str) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, case], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_writes_of_one_pass_leave_in_one_send_without_the_reactor():
    out = _run("one_tick")
    assert out["class"] == "SendSoonServer"
    # Twisted's own transport registers the socket for writability on every write.
    assert out["registered_after_write"] is False
    assert out["pending"] == len(b"event: a\n\nevent: b\n\n")
    assert out["registered_after_send"] is False and out["buffered_after_send"] == 0
    assert out["received"] == "event: a\n\nevent: b\n\nevent: c\n\n"
    assert out["lost"] == "ConnectionDone"


def test_tls_on_top_goes_the_same_way():
    out = _run("tls")
    assert out["class"] == "SendSoonServer"
    assert out["registered_after_send"] is False
    assert out["received"] == "event: a\n\nevent: b\n\nevent: c\n\n"
    assert out["lost"] == "ConnectionDone"


def test_a_slow_client_gets_twisteds_buffer_and_producer_pausing():
    out = _run("slow_client")
    assert out["paused"] >= 1
    assert out["registered_while_full"] is True
    assert out["buffered_while_full"] > 0
    assert out["complete"] is True
    assert out["lost"] == "ConnectionDone"


def test_writes_to_a_reset_connection_end_it_quietly():
    out = _run("peer_gone")
    assert out["lost"] in ("ConnectionLost", "ConnectionDone")


def test_abort_in_the_same_pass_sends_nothing():
    out = _run("abort")
    assert out["received"] == "<reset>"
    assert out["lost"] == "ConnectionAborted"
