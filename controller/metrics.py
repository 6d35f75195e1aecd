"""Prometheus metrics of one controller. Labels are bounded: never a terminal or broadcast id."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# `_created` series double every counter for no use to a county dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """All of a controller's metrics, on its own registry (several controllers can share a process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.mqtt_received = Counter(
            "cunxiang_mqtt_messages_received_total",
            "MQTT messages received, by channel",
            ["channel"],
            registry=r,
        )
        self.mqtt_rejected = Counter(
            "cunxiang_mqtt_messages_rejected_total",
            "MQTT messages ignored because they broke the protocol or named something unknown",
            ["reason"],
            registry=r,
        )
        self.mqtt_published = Counter(
            "cunxiang_mqtt_messages_published_total", "MQTT messages published, by kind", ["kind"], registry=r
        )
        self.mqtt_connected = Gauge(
            "cunxiang_mqtt_connected", "1 while the controller is connected to the broker", registry=r
        )
        self.mqtt_reconnects = Counter(
            "cunxiang_mqtt_reconnects_total", "Connections to the broker after the first", registry=r
        )
        self.broadcasts_accepted = Counter(
            "cunxiang_broadcasts_accepted_total", "Broadcasts accepted, by kind", ["kind"], registry=r
        )
        self.delivery_transitions = Counter(
            "cunxiang_delivery_transitions_total",
            "Delivery state changes, by new state",
            ["state"],
            registry=r,
        )
        self.commands_refused = Counter(
            "cunxiang_commands_refused_total",
            "Terminals refusing a command in our name as not signed by a key they trust: a forgery, "
            "or a terminal missing the controller's current key",
            ["reason"],
            registry=r,
        )
        self.delivery_ignored = Counter(
            "cunxiang_delivery_transitions_ignored_total",
            "Acknowledgements of a tracked delivery that did not move it: duplicate, backwards, after_final",
            ["reason"],
            registry=r,
        )
        self.delivery_retries = Counter(
            "cunxiang_delivery_retries_total",
            "Commands sent again to a terminal whose `received` was overdue",
            registry=r,
        )
        self.db_flushes = Counter("cunxiang_db_flushes_total", "Batched database writes", registry=r)
        self.db_flush_errors = Counter("cunxiang_db_flush_errors_total", "Failed batched writes", registry=r)
        self.db_rows_refused = Counter(
            "cunxiang_db_rows_refused_total",
            "Rows the database refused outright and that were dropped",
            registry=r,
        )
        self.db_flush_rows = Histogram(
            "cunxiang_db_flush_rows",
            "Rows written per batched write",
            buckets=(1, 10, 100, 1000, 10_000, 100_000),
            registry=r,
        )
        self.presence_flapping = Counter(
            "cunxiang_presence_flapping_total", "Times a terminal was found flapping", registry=r
        )
        self.alarms_raised = Counter(
            "cunxiang_alarms_raised_total", "Terminal fault alarms raised, by fault", ["fault"], registry=r
        )
        self.heartbeat_fields_dropped = Counter(
            "cunxiang_heartbeat_fields_dropped_total",
            "Telemetry members dropped from heartbeats because they were out of range or malformed",
            ["field"],
            registry=r,
        )
        self.cap_messages = Counter(
            "cunxiang_cap_messages_total",
            "CAP messages received, by what became of them (duplicates: seen before, nothing done)",
            ["outcome"],
            registry=r,
        )
        self.terminals_by_presence = Gauge(
            "cunxiang_terminals", "Registered terminals, by presence", ["presence"], registry=r
        )
