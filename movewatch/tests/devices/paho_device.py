#!/usr/bin/python3
"""A device as a supplier's on-board unit behaves, on a real MQTT client
(Eclipse Paho, Debian's python3-paho-mqtt), for movewatch's tests.

It publishes MESSAGES position messages at QoS 1 (each an array of POINTS
points for one of VANS vans, with unique tracking ids), keeps every message
until the broker acknowledges it, and after a lost connection reconnects and
sends again whatever was not acknowledged, like a store-and-forward unit.

Each acknowledged tracking id is written to ACKED_FILE as it is
acknowledged (one per line, flushed), so the test can compare what the
device was told was stored with what the store holds. Exits 0 once every
message is acknowledged, 1 if DEADLINE seconds pass first.

usage: paho_device.py HOST PORT SUPPLIER PASSWORD CLIENT_ID PREFIX VANS MESSAGES POINTS ACKED_FILE DEADLINE [PAUSE_MS]
"""

import datetime
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt


def main():
    (host, port, supplier, password, client_id, prefix, vans, messages, points,
     acked_path, deadline) = sys.argv[1:12]
    pause = float(sys.argv[12]) / 1000.0 if len(sys.argv) > 12 else 0.0
    port, vans, messages, points = int(port), int(vans), int(messages), int(points)
    deadline = time.monotonic() + float(deadline)
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=3)

    # The messages, in the order a fleet sends them.
    queue = []
    for m in range(messages):
        v = m % vans
        vehicle = f"{prefix}{v:02d}PAH"
        body, ids = [], []
        for p in range(points):
            step = (m // vans) * points + p
            tid = f"{prefix}-{v}-{step}"
            ids.append(tid)
            body.append({
                "tracking_id": tid,
                "tracking_timestamp": (start + datetime.timedelta(seconds=step)).isoformat(),
                "vehicle_registration": vehicle,
                "latitude": 52.0 + v * 0.01 + step * 1e-5,
                "longitude": -1.5 + step * 1e-5,
                "speed": 36.0,
            })
        queue.append((f"movewatch/v1/{supplier}/{vehicle}/positions", json.dumps(body), ids))

    lock = threading.Lock()
    connected = threading.Event()
    in_flight = {}  # mid -> message index
    done = set()  # acknowledged message indices
    acked = open(acked_path, "a", encoding="utf-8")

    def on_connect(client, userdata, flags, rc):
        if rc == 0:
            connected.set()
        else:
            print(f"paho_device: connection refused ({rc})", file=sys.stderr, flush=True)

    def on_disconnect(client, userdata, rc):
        connected.clear()
        # What was in flight is sent again after the reconnect.
        with lock:
            in_flight.clear()

    def on_publish(client, userdata, mid):
        with lock:
            i = in_flight.pop(mid, None)
            if i is None or i in done:
                return
            done.add(i)
            for tid in queue[i][2]:
                acked.write(tid + "\n")
            acked.flush()

    client = mqtt.Client(client_id=client_id, clean_session=True)
    client.username_pw_set(supplier, password)
    client.max_inflight_messages_set(50)
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_publish = on_publish
    client.connect_async(host, port, keepalive=20)
    client.loop_start()

    next_index = 0
    while time.monotonic() < deadline:
        with lock:
            if len(done) == len(queue):
                break
        if not connected.wait(timeout=0.5):
            continue
        # Everything not acknowledged and not in flight goes (again), oldest first.
        with lock:
            flying = set(in_flight.values())
            todo = [i for i in range(len(queue)) if i not in done and i not in flying]
        for i in todo[:200]:
            if not connected.is_set():
                break
            topic, payload, _ = queue[i]
            info = client.publish(topic, payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                with lock:
                    in_flight[info.mid] = i
            next_index = max(next_index, i + 1)
            if pause:
                time.sleep(pause)
        time.sleep(0.05)

    client.loop_stop()
    acked.close()
    with lock:
        missing = len(queue) - len(done)
    if missing:
        print(f"paho_device: {missing} of {len(queue)} messages never acknowledged", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
