"""Host stand-in for umqtt.simple: the same API, speaking MQTT 3.1.1 over a CPython socket."""

import select
import socket
import struct

CONNECT_TIMEOUT_S = 10
# A blocking read (PUBACK, SUBACK, the rest of a packet) gives up after this; the board's
# watchdog plays this part there.
READ_TIMEOUT_S = 10


class MQTTException(Exception):
    pass


class MQTTClient:
    def __init__(
        self,
        client_id,
        server,
        port=0,
        user=None,
        password=None,
        keepalive=0,
        ssl=None,
        ssl_params=None,
    ):
        if port == 0:
            port = 8883 if ssl else 1883
        self.client_id = client_id
        self.sock = None
        self.server = server
        self.port = port
        self.ssl = ssl
        self.pid = 0
        self.cb = None
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.lw_topic = None
        self.lw_msg = None
        self.lw_qos = 0
        self.lw_retain = False
        self._held = []  # packets read while waiting for another one

    # --- framing --------------------------------------------------------------------------

    @staticmethod
    def _str(value):
        if isinstance(value, str):
            value = value.encode()
        return struct.pack("!H", len(value)) + value

    @staticmethod
    def _length(n):
        out = bytearray()
        while True:
            byte = n & 0x7F
            n >>= 7
            out.append(byte | 0x80 if n else byte)
            if not n:
                return bytes(out)

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise OSError(-1, "connection closed by the broker")
            buf += chunk
        return buf

    def _read_packet(self):
        op = self._read(1)[0]
        size, shift = 0, 0
        while True:
            byte = self._read(1)[0]
            size |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTException("bad remaining length")
        return op, self._read(size) if size else b""

    def _send(self, op, body):
        self.sock.sendall(bytes([op]) + self._length(len(body)) + body)

    def _next_pid(self):
        self.pid = self.pid % 65535 + 1
        return self.pid

    # --- API --------------------------------------------------------------------------------

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        assert 0 <= qos <= 2
        assert topic
        self.lw_topic = topic
        self.lw_msg = msg
        self.lw_qos = qos
        self.lw_retain = retain

    def connect(self, clean_session=True, timeout=None):
        sock = socket.create_connection((self.server, self.port), timeout or CONNECT_TIMEOUT_S)
        if self.ssl:
            sock = self.ssl.wrap_socket(sock, server_hostname=self.server)
        sock.settimeout(READ_TIMEOUT_S)
        self.sock = sock
        flags = 0x02 if clean_session else 0
        payload = self._str(self.client_id)
        if self.lw_topic:
            flags |= 0x04 | (self.lw_qos & 3) << 3 | (0x20 if self.lw_retain else 0)
            payload += self._str(self.lw_topic) + self._str(self.lw_msg)
        if self.user is not None:
            flags |= 0x80
            payload += self._str(self.user)
            if self.pswd is not None:
                flags |= 0x40
                payload += self._str(self.pswd)
        header = self._str("MQTT") + bytes([4, flags]) + struct.pack("!H", self.keepalive)
        self._send(0x10, header + payload)
        op, body = self._read_packet()
        if op != 0x20 or len(body) != 2:
            raise MQTTException("expected CONNACK")
        if body[1] != 0:
            raise MQTTException(body[1])
        return body[0] & 1

    def disconnect(self):
        try:
            self.sock.sendall(b"\xe0\x00")
        finally:
            self.sock.close()

    def ping(self):
        self.sock.sendall(b"\xc0\x00")

    def publish(self, topic, msg, retain=False, qos=0):
        if isinstance(topic, str):
            topic = topic.encode()
        if isinstance(msg, str):
            msg = msg.encode()
        op = 0x30 | qos << 1 | (1 if retain else 0)
        body = self._str(topic)
        pid = 0
        if qos > 0:
            pid = self._next_pid()
            body += struct.pack("!H", pid)
        self._send(op, body + bytes(msg))
        if qos == 1:
            self._await(0x40, pid)
        elif qos == 2:
            raise MQTTException("QoS 2 is not supported")

    def subscribe(self, topic, qos=0):
        if isinstance(topic, str):
            topic = topic.encode()
        pid = self._next_pid()
        self._send(0x82, struct.pack("!H", pid) + self._str(topic) + bytes([qos]))
        body = self._await(0x90, pid)
        if body[2] == 0x80:
            raise MQTTException("subscription refused")

    def _await(self, op, pid):
        """Read until the packet `op` for `pid`; publications in between go to the callback."""
        while True:
            got, body = self._read_packet()
            if got & 0xF0 == 0x30:
                self._deliver(got, body)
            elif got == op and struct.unpack("!H", body[:2])[0] == pid:
                return body

    def _deliver(self, op, body):
        qos = (op >> 1) & 3
        (tlen,) = struct.unpack("!H", body[:2])
        topic = body[2 : 2 + tlen]
        pos = 2 + tlen
        if qos:
            pid = body[pos : pos + 2]
            pos += 2
        msg = body[pos:]
        if self.cb is not None:
            self.cb(topic, msg)
        if qos == 1:
            self._send(0x40, pid)
        elif qos == 2:
            raise MQTTException("QoS 2 delivery is not supported")

    def wait_msg(self):
        """Read one packet; a PUBLISH goes to the callback. Returns its type, or None."""
        op, body = self._read_packet()
        if op == 0xD0:
            return None
        if op & 0xF0 == 0x30:
            self._deliver(op, body)
        return op

    def check_msg(self):
        """Like wait_msg, but returns None at once when nothing has arrived."""
        pending = getattr(self.sock, "pending", None)
        if pending is None or not pending():
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return None
        return self.wait_msg()
