

def test_passive_handshake_and_echo(passive):
    stack, sid, peer = passive
    assert stack.state(sid) == "ESTABLISHED"
    peer.seg("PA", b"hello")
    stack.expect_nothing()  # delayed ACK
    assert stack.read(sid) == b"hello"
    assert stack.write(sid, b"world") == 5
    stack.expect({"flags": "PA", "seq": peer.rcv, "ack": peer.nxt, "payload": b"world"})


def test_active_handshake(active):
    stack, sid, peer = active
    assert stack.info(sid)["mss"] == 1460
