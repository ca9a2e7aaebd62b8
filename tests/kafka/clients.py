#!/usr/bin/env python3
"""Kafka clients that nobody here wrote (confluent-kafka: librdkafka inside its
wheel; kafka-python: pure Python), driven against a Tern broker's Kafka
listener by tests/tests/kafka.rs. Each command prints JSON lines the test
checks and exits non-zero on any client error. Every wait is bounded."""

import json
import sys
import time


def out(obj):
    print(json.dumps(obj), flush=True)


def confluent_produce(addr, topic, count, codec):
    """Idempotent producer, acks=all: every record acknowledged once."""
    from confluent_kafka import Producer

    p = Producer({
        "bootstrap.servers": addr,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": codec,
        "linger.ms": 5,
        "batch.size": 65536,
        "message.timeout.ms": 60000,
    })
    acked, failed = [], []

    def report(err, msg):
        if err is not None:
            failed.append(str(err))
        else:
            acked.append((msg.partition(), msg.offset(), msg.key().decode()))

    for i in range(count):
        while True:
            try:
                p.produce(topic, key=f"k{i % 10}", value=f"v{i}",
                          headers=[("n", str(i).encode())], on_delivery=report)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(60)
    if left or failed:
        out({"error": f"{left} undelivered, failures: {failed[:5]}"})
        sys.exit(1)
    out({"acked": len(acked)})


def confluent_consume(addr, topic, count):
    """Reads `count` records from the start of every partition, no group."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": addr, "group.id": "unused",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    md = c.list_topics(topic, timeout=30)
    parts = sorted(md.topics[topic].partitions)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    got, deadline = 0, time.time() + 60
    while got < count and time.time() < deadline:
        m = c.poll(1.0)
        if m is None:
            continue
        if m.error():
            out({"error": str(m.error())})
            sys.exit(1)
        headers = dict((k, v.decode()) for k, v in (m.headers() or []))
        out({"p": m.partition(), "o": m.offset(), "k": m.key().decode() if m.key() else None,
             "v": m.value().decode(), "h": headers, "ts": m.timestamp()[1]})
        got += 1
    c.close()
    if got < count:
        out({"error": f"only {got} of {count} records"})
        sys.exit(1)


def kafka_python_produce(addr, topic, count):
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=addr, acks="all")
    futures = [p.send(topic, key=f"k{i % 10}".encode(), value=f"py{i}".encode(),
                      headers=[("n", str(i).encode())]) for i in range(count)]
    offsets = [f.get(timeout=60).offset for f in futures]
    p.close()
    out({"acked": len(offsets)})


def kafka_python_consume(addr, topic, count):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=addr, enable_auto_commit=False,
                      auto_offset_reset="earliest", consumer_timeout_ms=60000)
    parts = None
    deadline = time.time() + 30
    while not parts and time.time() < deadline:
        parts = c.partitions_for_topic(topic)
    c.assign([TopicPartition(topic, p) for p in sorted(parts)])
    c.seek_to_beginning()
    got = 0
    for m in c:
        out({"p": m.partition, "o": m.offset, "k": m.key.decode() if m.key else None,
             "v": m.value.decode(), "h": dict((k, v.decode()) for k, v in m.headers)})
        got += 1
        if got >= count:
            break
    c.close()
    if got < count:
        out({"error": f"only {got} of {count} records"})
        sys.exit(1)


def confluent_group_member(addr, topic, group, stop_file, limit_s):
    """One member of a consumer group: prints its assignment after every
    rebalance and each record it reads; commits what it read after every
    poll; leaves the group cleanly when `stop_file` exists."""
    import os
    from confluent_kafka import Consumer, KafkaException

    def on_assign(consumer, partitions):
        out({"assigned": sorted(p.partition for p in partitions)})

    def on_revoke(consumer, partitions):
        out({"revoked": sorted(p.partition for p in partitions)})

    c = Consumer({"bootstrap.servers": addr, "group.id": group,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "session.timeout.ms": 10000, "heartbeat.interval.ms": 500,
                  "partition.assignment.strategy": "range",
                  **({"debug": os.environ["KAFKA_DEBUG"]} if os.environ.get("KAFKA_DEBUG") else {})})
    c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    deadline = time.time() + limit_s
    while not os.path.exists(stop_file) and time.time() < deadline:
        msgs = c.consume(num_messages=500, timeout=0.2)
        for m in msgs:
            if m.error():
                out({"error": str(m.error())})
                continue
            out({"p": m.partition(), "o": m.offset(), "k": m.key().decode() if m.key() else None})
        if msgs:
            try:
                c.commit(asynchronous=False)
            except KafkaException as e:
                # Normal while the group rebalances: the records are read
                # again by whoever owns the partition next (at least once).
                out({"commit_error": str(e)})
    c.close()
    out({"closed": True})


def committed(addr, topic, group):
    """The group's committed offsets as a Kafka client reads them."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": addr, "group.id": group})
    md = c.list_topics(topic, timeout=30)
    parts = [TopicPartition(topic, p) for p in sorted(md.topics[topic].partitions)]
    for tp in c.committed(parts, timeout=30):
        out({"p": tp.partition, "o": tp.offset})
    c.close()


def kafka_python_group(addr, topic, group, count):
    """kafka-python in a group: reads `count` records, commits, leaves."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(topic, bootstrap_servers=addr, group_id=group,
                      enable_auto_commit=False, auto_offset_reset="earliest",
                      consumer_timeout_ms=60000)
    got = 0
    for m in c:
        got += 1
        if got >= count:
            break
    c.commit()
    c.close()
    out({"consumed": got})
    if got < count:
        sys.exit(1)


def produce_and_read_back(conf, topic, value):
    """Produces `value` to partition 0 of `topic` and reads it back."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    p = Producer(conf)
    p.produce(topic, value=value)
    if p.flush(30):
        out({"error": "produce not acknowledged"})
        sys.exit(1)
    c = Consumer(dict(conf, **{"group.id": f"{topic}-g"}))
    c.assign([TopicPartition(topic, 0, 0)])
    deadline = time.time() + 30
    while time.time() < deadline:
        m = c.poll(1.0)
        if m is not None and not m.error():
            out({"read": m.value().decode()})
            c.close()
            return
    out({"error": "nothing read"})
    sys.exit(1)


def confluent_tls(addr, ca, topic):
    """TLS to the Kafka listener (the broker's certificate checked against
    `ca`): creates `topic`, produces one record, reads it back."""
    from confluent_kafka.admin import AdminClient, NewTopic

    conf = {"bootstrap.servers": addr, "security.protocol": "SSL", "ssl.ca.location": ca}
    admin = AdminClient(conf)  # kept alive until its futures resolve
    for f in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
        f.result(timeout=30)
    produce_and_read_back(conf, topic, "over tls")


def confluent_sasl(addr, user, password, topic):
    """SCRAM-SHA-256 over the Kafka listener: creates `topic`, produces one
    record and reads it back. With wrong credentials, prints the
    authentication error librdkafka reports and exits 3."""
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient, NewTopic

    conf = {"bootstrap.servers": addr, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": user,
            "sasl.password": password}
    errors = []
    conf["error_cb"] = lambda e: errors.append(e)
    admin = AdminClient(conf)
    try:
        for f in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)],
                                     request_timeout=15).values():
            f.result(timeout=20)
    except Exception as e:  # noqa: BLE001 - reported below
        admin.poll(1)  # serves the error callbacks
        auth = [x for x in errors if x.code() == KafkaError._AUTHENTICATION]
        out({"error": str(e), "authentication": [str(x) for x in auth]})
        sys.exit(3 if auth else 1)
    produce_and_read_back(conf, topic, user)


def confluent_produce_stream(addr, topic, count, rate):
    """An idempotent acks=all producer at `rate` records/s: record i has key
    k(i % 10) and value "<key>:<n>" (n counts per key). Prints every
    acknowledged record; exits non-zero on any delivery failure."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": addr, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 5, "message.timeout.ms": 120000, "retry.backoff.ms": 100,
                  "socket.timeout.ms": 5000, "metadata.max.age.ms": 2000})
    failed = []

    def report(err, msg):
        if err is not None:
            failed.append(str(err))
        else:
            out({"k": msg.key().decode(), "v": msg.value().decode(),
                 "p": msg.partition(), "o": msg.offset()})

    per_key = [0] * 10
    start = time.time()
    for i in range(count):
        key = i % 10
        value = f"k{key}:{per_key[key]}"
        per_key[key] += 1
        while True:
            try:
                p.produce(topic, key=f"k{key}", value=value, on_delivery=report)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        ahead = start + (i + 1) / rate - time.time()
        if ahead > 0:
            time.sleep(ahead)
    left = p.flush(120)
    if left or failed:
        out({"error": f"{left} undelivered, failures: {failed[:5]}"})
        sys.exit(1)
    out({"done": count})



if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "confluent-produce":
        confluent_produce(args[0], args[1], int(args[2]), args[3])
    elif cmd == "confluent-consume":
        confluent_consume(args[0], args[1], int(args[2]))
    elif cmd == "kafka-python-produce":
        kafka_python_produce(args[0], args[1], int(args[2]))
    elif cmd == "kafka-python-consume":
        kafka_python_consume(args[0], args[1], int(args[2]))
    elif cmd == "confluent-group-member":
        confluent_group_member(args[0], args[1], args[2], args[3], float(args[4]))
    elif cmd == "committed":
        committed(args[0], args[1], args[2])
    elif cmd == "kafka-python-group":
        kafka_python_group(args[0], args[1], args[2], int(args[3]))
    elif cmd == "confluent-produce-stream":
        confluent_produce_stream(args[0], args[1], int(args[2]), float(args[3]))
    elif cmd == "confluent-tls":
        confluent_tls(args[0], args[1], args[2])
    elif cmd == "confluent-sasl":
        confluent_sasl(args[0], args[1], args[2], args[3])
    else:
        sys.exit(f"unknown command {cmd}")
