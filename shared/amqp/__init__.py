"""RabbitMQ for Clearance: topology, confirmed publishing and a reliable consumer runtime.

Topology (declared idempotently by `declare_topology`; every consumer declares
its own on start):

    clearance.events (topic, durable)
        │ bindings (routing keys of QueueSpec)
        ▼
    <q>                 quorum; x-delivery-limit; broker dead-letters → <q>.dlq
    <q>.retry.<ms>      quorum; x-message-ttl=<ms>; expired → "" exchange, key <q>
    <q>.dlq             quorum; where messages end with their reason

Decisions:

* **Quorum queues everywhere** (RabbitMQ ≥ 3.10, which supports message TTL on
  quorum queues and at-least-once dead-lettering; both are used).
* **Retries go back to the failing queue only.** A failed message is copied to
  `<q>.retry.<delay_ms>`; when its TTL expires the broker dead-letters it via
  the default exchange to `<q>` — never to the topic exchange, where every other
  consumer would get it again. The delay for attempt n is
  `settings.retry_delays_ms[n-1]`, the last one repeating; a queue per distinct
  delay keeps TTL expiry in FIFO order. The attempt number travels in the
  `x-attempt` header, the last error in `x-last-error`.
* **Copy first, ack second.** Retry and DLQ copies are published with publisher
  confirms before the original is acked, so a crash in between produces a
  duplicate (handlers are idempotent by `event_id`), never a loss. A failed
  copy requeues the original instead of acking it.
* **DLQ entries are the message verbatim** (body and properties) plus
  `x-death-reason`, `x-death-kind` (malformed | rejected | exhausted |
  redelivery-limit), `x-death-queue`, `x-attempts`, `x-original-routing-key`
  and `x-failed-at` (ISO 8601, UTC). Broker bookkeeping headers (`x-death`,
  `x-delivery-count`, ...) are not carried into copies.
* **Crash loops end in the DLQ.** A message whose handler kills the process is
  never acked, so the broker keeps redelivering the same copy. The consumer
  dead-letters a copy redelivered `QueueSpec.delivery_limit` times (default 10)
  without running the handler, and calls `on_dead_letter`; the queue's
  `x-delivery-limit` (same value) is the broker-side backstop, dead-lettering
  at-least-once into `<q>.dlq` (then only `x-death` says why). Both rely on
  the broker's `x-delivery-count` (verified on RabbitMQ 3.10; recheck how
  returns are counted when upgrading the broker).
* **Publishing is mandatory and confirmed.** `Publisher.publish` returns once
  the broker confirmed; a nack, a timeout, a missing exchange or a closed
  channel raise `PublishFailed`, and a message no queue is bound for raises
  `Unroutable` instead of vanishing silently.
* **Robust connections.** `connect` uses aio-pika's robust connection: after a
  broker restart or a network cut, channels, queues, bindings and consumers
  are declared again. Deliveries in flight on the lost channel cannot be acked
  any more; the broker redelivers them.
* **Graceful shutdown.** `Consumer.drain` cancels the consumer, waits for
  in-flight handlers, cancels the ones still running at the deadline (unacked,
  so the broker requeues them) and closes the channel;
  `run_until_signalled` wires that to SIGTERM/SIGINT.
* **Metrics** live in `ConsumerMetrics(registry)`; pass one per registry, or
  let consumers share `default_consumer_metrics()` on the default registry.
"""

from shared.amqp.consumer import (
    Consumer,
    Delivery,
    Handler,
    OnDeadLetter,
    Reject,
    Retry,
    run_until_signalled,
)
from shared.amqp.metrics import ConsumerMetrics, default_consumer_metrics
from shared.amqp.publisher import (
    Publisher,
    PublishFailed,
    Unroutable,
    event_message,
    publish_confirmed,
)
from shared.amqp.topology import (
    DEFAULT_DELIVERY_LIMIT,
    BrokerUnavailable,
    QueueSpec,
    connect,
    declare_exchange,
    declare_topology,
    dlq_name,
    retry_delay_ms,
    retry_queue_name,
)

__all__ = [
    "DEFAULT_DELIVERY_LIMIT",
    "BrokerUnavailable",
    "Consumer",
    "ConsumerMetrics",
    "Delivery",
    "Handler",
    "OnDeadLetter",
    "PublishFailed",
    "Publisher",
    "QueueSpec",
    "Reject",
    "Retry",
    "Unroutable",
    "connect",
    "declare_exchange",
    "declare_topology",
    "default_consumer_metrics",
    "dlq_name",
    "event_message",
    "publish_confirmed",
    "retry_delay_ms",
    "retry_queue_name",
    "run_until_signalled",
]
