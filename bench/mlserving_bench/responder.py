"""What the two reference servers (echo.py, naive.py) share: a plain responder on our MQTT layer.

Deliberately the straightforward shape, on the same connection layer as our server
(`mlserving_common.mqtt`), so that it measures what a simple server pays with nothing of ours on
top: a shared subscription at QoS 1, the answer published from on_message (in the layer's network
thread) to the request's Response Topic with its Correlation Data, the request acknowledged once
answered (manual ack, as the server does), and the chart's Receive Maximum. TCP_NODELAY is the
layer's own default. mqtt_layers.py runs the same echo on other MQTT libraries, to compare.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from mlserving_bench import chartlimits
from mlserving_client import transport
from mlserving_common import mqtt, protocol
from mlserving_server.config import PASSWORD_ENV

#: CONNECT Receive Maximum of every reference responder: the window the chart gives our server.
RECEIVE_MAXIMUM = chartlimits.server_limits()["receive_maximum"]
#: (payload) -> answer payload; runs in the connection's network thread.
Handler = Callable[[bytes], bytes]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="broker port")
    parser.add_argument("--username", default="server", help=f"broker user (password from ${PASSWORD_ENV})")
    parser.add_argument("--topic", required=True, help="request topic, subscribed as $share/<group>/<topic>")
    parser.add_argument("--share-group", default=protocol.DEFAULT_SHARE_GROUP, help="shared subscription group")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1, help="subscription and answer QoS (default 1)")
    parser.add_argument("--ready-file", type=Path, help="created once subscribed, so a parent knows we serve")


def serve(args: argparse.Namespace, handler: Handler, name: str) -> int:
    """Connect, subscribe, answer until SIGTERM/SIGINT."""
    stop = threading.Event()
    qos = args.qos
    shared = protocol.shared_subscription(args.topic, args.share_group)

    def on_connect(_ack: mqtt.ConnAck) -> None:  # every (re)connect: the subscription goes with the session
        conn.subscribe(shared, qos=qos, on_done=on_subscribed)

    def on_subscribed(ack: mqtt.SubscribeAck) -> None:
        if ack.error is None and not ack.refused and args.ready_file is not None:
            args.ready_file.touch()

    def on_message(msg: mqtt.Message) -> None:
        if msg.response_topic:
            conn.publish(msg.response_topic, handler(msg.payload), qos, correlation_data=msg.correlation_data)
        conn.ack(msg)

    options = mqtt.ConnectOptions(
        args.host,
        args.port,
        client_id=transport.new_client_id(args.username, name),
        username=args.username,
        password=os.environ.get(PASSWORD_ENV),
        receive_maximum=RECEIVE_MAXIMUM,
        reconnect=transport.RECONNECT,
    )
    conn = mqtt.Connection(options, on_message=on_message, on_connect=on_connect, manual_ack=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    conn.start()
    stop.wait()
    conn.close()
    return 0
