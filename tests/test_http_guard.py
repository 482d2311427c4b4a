"""http: one deadline per call, and IPv6 forms that carry a private IPv4 address (issue #10 item 8)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pytest

from apps_registry.manifest.compiled import CompiledApp
from tooling.modules.http import _public, embedded_ipv4
from tooling.services import tool_invoke

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b:1::808:808",  # local-use NAT64 prefix, whatever it embeds
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
        "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
        "::127.0.0.1",  # IPv4-compatible
        "::ffff:10.0.0.1",  # IPv4-mapped
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo whose client is 10.0.0.1
        "::1",
        "fe80::1",
        "fc00::1",
    ],
)
def test_ipv6_forms_of_private_addresses_are_not_public(address):
    assert not _public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "2606:4700:4700::1111", "8.8.8.8"])
def test_public_addresses_stay_public(address):
    assert _public(ipaddress.ip_address(address))


def test_embedded_ipv4_reads_each_form():
    assert embedded_ipv4(ipaddress.IPv6Address("64:ff9b::7f00:1")) == [ipaddress.IPv4Address("127.0.0.1")]
    assert embedded_ipv4(ipaddress.IPv6Address("2002:7f00:1::")) == [ipaddress.IPv4Address("127.0.0.1")]


def test_nat64_and_6to4_literals_are_refused_before_any_connection():
    app = CompiledApp(app_id="h", name="H", modules={"http": {}})
    for url in ("http://[64:ff9b::7f00:1]:9/", "http://[2002:7f00:1::]:9/", "http://[64:ff9b::a9fe:a9fe]/latest"):
        outcome = tool_invoke(app=app, tool_name="http.get", params={"url": url}, caller="t", principal="t")
        assert outcome.status == "error" and "allowed_hosts" in outcome.error, (url, outcome.error)


@pytest.fixture
def dripping_server():
    """Answers with headers, then one body byte every 0.2 s for 40 s: each read is quick, the call is not."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\nContent-Type: text/plain\r\n\r\n")
                for _ in range(200):
                    if stop.is_set():
                        break
                    conn.sendall(b"x")
                    time.sleep(0.2)
            except OSError:
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


@pytest.mark.timeout(120)
def test_the_timeout_bounds_the_whole_call_not_each_read(dripping_server):
    app = CompiledApp(app_id="h", name="H", modules={"http": {"allowed_hosts": ["127.0.0.1"], "timeout": 1.5}})
    outcome = tool_invoke(
        app=app, tool_name="http.get", params={"url": f"http://127.0.0.1:{dripping_server}/"}, caller="t", principal="t"
    )
    assert outcome.status == "error" and "within 1.5 s" in outcome.error, outcome
