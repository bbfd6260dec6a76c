"""What the two reference servers (echo.py, naive.py) share: a plain paho MQTT v5 responder.

Deliberately the textbook shape, so that it measures what a straightforward server pays:
stock paho (its threaded network loop), a shared subscription at QoS 1, the answer published
from on_message to the request's Response Topic with its Correlation Data in a freshly built
paho Properties. The only tuning is what no server can go without: TCP_NODELAY (QoS 1 falls
to ~1,000 msg/s under Nagle) and no client-side cap on in-flight messages — both done by the
client library's `transport.make_client`, the same paho setup the load generator's paho engine uses.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mlserving_client import transport
from mlserving_common import protocol

PASSWORD_ENV = "MLSERVING_BROKER_PASSWORD"
#: (payload) -> answer payload; runs in paho's network thread.
Handler = Callable[[bytes], bytes]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="broker port")
    parser.add_argument("--username", default="server", help="broker user (password from $%s)" % PASSWORD_ENV)
    parser.add_argument("--topic", required=True, help="request topic, subscribed as $share/<group>/<topic>")
    parser.add_argument("--share-group", default=protocol.DEFAULT_SHARE_GROUP, help="shared subscription group")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1, help="subscription and answer QoS (default 1)")
    parser.add_argument("--ready-file", type=Path, help="created once subscribed, so a parent knows we serve")


def serve(args: argparse.Namespace, handler: Handler, name: str) -> int:
    """Connect, subscribe, answer until SIGTERM/SIGINT."""
    stop = threading.Event()
    subscribed = threading.Event()
    client = transport.make_client(transport.new_client_id(args.username, name), args.username, os.environ.get(PASSWORD_ENV))
    qos = args.qos
    shared = protocol.shared_subscription(args.topic, args.share_group)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if not reason_code.is_failure:
            c.subscribe(shared, qos=qos)

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, reason_codes: Any, _p: Any) -> None:
        if not any(rc.is_failure for rc in reason_codes):
            subscribed.set()
            if args.ready_file is not None:
                args.ready_file.touch()

    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        reply_to = getattr(msg.properties, "ResponseTopic", None)
        if not reply_to:
            return
        props = Properties(PacketTypes.PUBLISH)
        correlation = getattr(msg.properties, "CorrelationData", None)
        if correlation is not None:
            props.CorrelationData = correlation
        c.publish(reply_to, handler(msg.payload), qos, properties=props)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    transport.start(client, args.host, args.port)
    stop.wait()
    client.disconnect()
    client.loop_stop()
    return 0
