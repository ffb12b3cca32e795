"""The one place concrete adapters are built and wired; the app and CLI start from here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from vendhub.adapters.db.engine import create_engine
from vendhub.adapters.mqtt.client import MqttClient, MqttConfig
from vendhub.adapters.mqtt.embedded import EmbeddedBroker
from vendhub.adapters.mqtt.stream import StreamSubscriber
from vendhub.adapters.payments.midtrans import MidtransConfig, MidtransProvider
from vendhub.adapters.payments.sandbox import SandboxProvider
from vendhub.config import Settings
from vendhub.metrics import Metrics
from vendhub.protocol.topics import INBOUND_KINDS, TopicKind, fleet_filter
from vendhub.services import auth, commands
from vendhub.services.context import PaymentPolicy, ServiceContext, Tunables
from vendhub.services.ports import PaymentProvider
from vendhub.services.retention import RetentionPolicy
from vendhub.workers.intake import Intake
from vendhub.workers.payment_jobs import run_payment_jobs
from vendhub.workers.publisher import OutboxPublisher
from vendhub.workers.retention import run_retention
from vendhub.workers.timers import run_timers

log = logging.getLogger(__name__)


def tunables_from(settings: Settings) -> Tunables:
    return Tunables(
        topic_prefix=settings.mqtt_topic_prefix,
        motor_margin_ms=settings.motor_margin_ms,
        result_grace_ms=settings.result_grace_ms,
        dispense_max_attempts=settings.dispense_max_attempts,
        command_ttl_s=settings.command_ttl_s,
        queue_ttl_s=settings.dispense_queue_ttl_s,
        order_ttl_s=settings.order_ttl_s,
        late_payment_policy=settings.late_payment_policy,
        default_machine_id=settings.machine_id,
    )


def payment_policy_from(settings: Settings) -> PaymentPolicy:
    return PaymentPolicy(
        reconcile_after_s=settings.reconcile_after_s,
        reconcile_every_s=settings.reconcile_every_s,
        refund_max_attempts=settings.refund_max_attempts,
        backoff_base_s=settings.refund_backoff_s,
        backoff_max_s=settings.refund_backoff_max_s,
        # Longer than one HTTP call can take, so a live attempt is never overtaken.
        lease_s=max(60, int(settings.midtrans_timeout_s * 4)),
    )


def build_payment_provider(settings: Settings) -> PaymentProvider:
    if settings.payment_provider == "sandbox":
        return SandboxProvider(settings.payment_server_key, settings.base_url())
    return MidtransProvider(
        MidtransConfig.for_environment(
            settings.midtrans_server_key,
            production=settings.midtrans_is_production,
            api_base_url=settings.midtrans_api_base_url,
            snap_base_url=settings.midtrans_snap_base_url,
            read_timeout_s=settings.midtrans_timeout_s,
        )
    )


def mqtt_config(settings: Settings) -> MqttConfig:
    if settings.embedded_broker:
        return MqttConfig(
            host=settings.mqtt_embedded_bind,
            port=settings.mqtt_embedded_port,
            client_id=settings.client_id,
            publish_timeout_s=settings.mqtt_publish_timeout_s,
        )
    return MqttConfig.from_url(
        settings.mqtt_broker_url,
        username=settings.mqtt_username,
        password=settings.mqtt_password,
        client_id=settings.client_id,
        publish_timeout_s=settings.mqtt_publish_timeout_s,
    )


def subscriptions(
    prefix: str, share_group: str | None, kinds: tuple[TopicKind, ...] = INBOUND_KINDS
) -> list[str]:
    """Results and telemetry go to one replica of the group; every replica gets every status
    (applying one is idempotent under a row lock), because brokers send retained messages to
    plain subscriptions only, and a starting replica needs the fleet's retained presence."""
    return [
        fleet_filter(prefix, kind, None if kind is TopicKind.STATUS else share_group)
        for kind in kinds
    ]


# Telemetry comes on its own lean connection (adapters/mqtt/stream.py); the rest on aiomqtt.
EVENT_KINDS = tuple(k for k in INBOUND_KINDS if k is not TopicKind.TELEMETRY)


@dataclass
class Container:
    """Everything `vendhub serve` runs, built without I/O; `start` and `stop` do the I/O."""

    settings: Settings
    engine: AsyncEngine
    ctx: ServiceContext
    payments: PaymentProvider
    payment_policy: PaymentPolicy
    metrics: Metrics
    mqtt: MqttClient
    telemetry_stream: StreamSubscriber
    intake: Intake
    publisher: OutboxPublisher
    broker: EmbeddedBroker | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, *, workers: bool = True) -> None:
        try:
            await self._start(workers=workers)
        except BaseException:
            # Nothing half-started may outlive a failed start (the embedded broker's tasks).
            await self.stop()
            raise

    async def _start(self, *, workers: bool) -> None:
        if self.broker is not None:
            await self.broker.start()
        if self.settings.admin_username and await auth.ensure_admin(
            self.ctx, self.settings.admin_username, self.settings.admin_password
        ):
            log.info("created bootstrap admin user %r", self.settings.admin_username)
        if not workers:
            return
        self.intake.start()
        # Only with a publisher running here may committed rows skip the poll.
        self.ctx.hand_off = self.publisher.hand_off
        # After a crash: units queued behind a command that has since settled get sent.
        await commands.resume_idle_machines(self.ctx)
        self._tasks = [
            asyncio.create_task(self.mqtt.run(), name="mqtt"),
            asyncio.create_task(self.telemetry_stream.run(), name="mqtt-telemetry"),
            asyncio.create_task(self.publisher.run(), name="outbox"),
            asyncio.create_task(self.publisher.run_handoffs(), name="outbox-handoff"),
            asyncio.create_task(run_timers(self.ctx, self.metrics), name="timers"),
            asyncio.create_task(
                run_payment_jobs(
                    self.ctx, self.payments, self.payment_policy, self.settings.payment_jobs_tick_s
                ),
                name="payments",
            ),
            asyncio.create_task(
                run_retention(
                    self.ctx,
                    RetentionPolicy(
                        raw_days=self.settings.telemetry_retention_days,
                        rollup_days=self.settings.telemetry_rollup_retention_days,
                        batch=self.settings.telemetry_prune_batch,
                    ),
                    self.settings.telemetry_prune_every_s,
                ),
                name="retention",
            ),
        ]

    async def stop(self) -> None:
        # Rows committed from now on wait for the poll (of this process or the next).
        self.ctx.hand_off = None
        await self.mqtt.stop()
        await self.telemetry_stream.stop()
        await self.intake.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.broker is not None:
            await self.broker.stop()
        # The provider may hold an HTTP connection pool (midtrans); it closes with the app.
        close = getattr(self.payments, "aclose", None)
        if close is not None:
            await close()
        await self.engine.dispose()

    def mqtt_connected(self) -> bool:
        return self.mqtt.connected


def build(settings: Settings) -> Container:
    engine = create_engine(settings.resolved_database_url)
    metrics = Metrics()
    ctx = ServiceContext(engine=engine, tunables=tunables_from(settings))
    intake = Intake(ctx, metrics)
    prefix = settings.mqtt_topic_prefix
    telemetry_stream = StreamSubscriber(
        config=mqtt_config(settings),
        topic_filters=subscriptions(prefix, settings.share_group, (TopicKind.TELEMETRY,)),
        on_frames=intake.take_telemetry,
        on_oversized=intake.oversized_telemetry,
        client_id_suffix="-telemetry",
    )
    intake.resume_telemetry = telemetry_stream.resume
    mqtt = MqttClient(
        config=mqtt_config(settings),
        subscriptions=subscriptions(prefix, settings.share_group, EVENT_KINDS),
        on_message=intake.handle,
        companions=[telemetry_stream],
    )
    publisher = OutboxPublisher(ctx, mqtt, metrics)
    container = Container(
        settings=settings,
        engine=engine,
        ctx=ctx,
        payments=build_payment_provider(settings),
        payment_policy=payment_policy_from(settings),
        metrics=metrics,
        mqtt=mqtt,
        telemetry_stream=telemetry_stream,
        intake=intake,
        publisher=publisher,
        broker=EmbeddedBroker(settings.mqtt_embedded_bind, settings.mqtt_embedded_port)
        if settings.embedded_broker
        else None,
    )
    ctx.wake_outbox = publisher.wake
    ctx.mqtt_connected = container.mqtt_connected
    ctx.unit_settled = metrics.unit_settled
    ctx.row_failed = metrics.row_failed

    metrics.mqtt_connected.set_function(lambda: float(mqtt.connected))
    metrics.telemetry_connected.set_function(lambda: float(telemetry_stream.connected))

    async def on_connect() -> None:
        publisher.wake()
        await _sync_fleet(container)

    mqtt.on_connect = on_connect
    return container


async def _sync_fleet(container: Container) -> None:
    """protocol.md: on (re)connect ask for unacknowledged results, but only machines with a
    command in flight (the others have no result we could have missed; devices re-publish
    until acked anyway), paced at MQTT_SYNC_PER_S so a reconnect is not a burst."""
    from vendhub.protocol.messages import SyncCommand
    from vendhub.protocol.topics import topic
    from vendhub.services.fleet import machines_awaiting_results

    prefix = container.settings.mqtt_topic_prefix
    pause = 1.0 / container.settings.mqtt_sync_per_s
    machine_ids = await machines_awaiting_results(container.ctx)
    for index, machine_id in enumerate(machine_ids):
        if index:
            await asyncio.sleep(pause)
        await container.mqtt.publish(
            topic(prefix, machine_id, TopicKind.COMMAND), SyncCommand().to_bytes()
        )
    if machine_ids:
        log.info("asked %d machine(s) with a command in flight to sync", len(machine_ids))
