"""The seed's testing endpoints; only when DEBUG_ENDPOINTS is on (admin-only in production)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends

from vendhub.adapters.payments import midtrans_notification
from vendhub.entrypoints.api.deps import ContainerDep, debug_enabled
from vendhub.entrypoints.api.replies import MqttStatus, PaymentOutcome, Published
from vendhub.entrypoints.api.schemas import (
    PaymentUpdate,
    SeedPaymentStatus,
    SimulatedResult,
    TestCommand,
)
from vendhub.protocol.messages import SyncCommand
from vendhub.protocol.topics import TopicKind, topic
from vendhub.services import orders
from vendhub.services import payments as payment_service

router = APIRouter(prefix="/api/debug", tags=["debug"], dependencies=[Depends(debug_enabled)])

# The seed's payment statuses → the Midtrans transaction_status a gateway would send.
SEED_TO_MIDTRANS = {
    SeedPaymentStatus.SUCCESS: "settlement",
    SeedPaymentStatus.PAID: "settlement",
    SeedPaymentStatus.PENDING: "pending",
    SeedPaymentStatus.FAILED: "deny",
    SeedPaymentStatus.EXPIRED: "expire",
    SeedPaymentStatus.CANCELLED: "cancel",
}


@router.get("/mqtt/status")
async def mqtt_status(container: ContainerDep) -> MqttStatus:
    s = container.settings
    return MqttStatus(
        mqtt={
            "connected": container.mqtt.connected,
            "broker": s.broker_display,
            "machineId": s.machine_id,
            "connects": container.mqtt.connects,
            "topicPrefix": s.mqtt_topic_prefix,
        },
    )


@router.post("/mqtt/test-command")
async def test_command(container: ContainerDep, body: TestCommand | None = None) -> Published:
    """Sends a harmless `sync` (a test dispense would run a motor for an unpaid unit)."""
    machine_id = (body.machine_id if body else None) or container.settings.machine_id
    target = topic(container.settings.mqtt_topic_prefix, machine_id, TopicKind.COMMAND)
    payload = SyncCommand().to_bytes()
    await container.mqtt.publish(target, payload)
    return Published(topic=target, payload=json.loads(payload))


@router.post("/mqtt/simulate-dispense-result")
async def simulate_result(body: SimulatedResult, container: ContainerDep) -> Published:
    """Publishes the result as the machine would, so it takes the real MQTT intake path."""
    order = await orders.get_order(container.ctx, body.order_id)
    machine_id = body.machine_id or order["machine_id"]
    payload = body.model_dump(by_alias=True, exclude={"machine_id"}, exclude_none=True)
    target = topic(container.settings.mqtt_topic_prefix, machine_id, TopicKind.DISPENSE_RESULT)
    await container.mqtt.publish(target, json.dumps(payload).encode())
    return Published(topic=target, payload=payload)


@router.post("/update-payment/{order_id}")
async def update_payment(
    order_id: str, body: PaymentUpdate, container: ContainerDep
) -> PaymentOutcome:
    """Builds a correctly signed notification and sends it through the webhook's path."""
    order = await orders.get_order(container.ctx, order_id)
    note = midtrans_notification.build(
        order_id,
        order["total_amount"],
        SEED_TO_MIDTRANS[body.status],
        container.settings.payment_server_key,
        transaction_id=f"debug-{order_id}",
    )
    outcome = await payment_service.receive_notification(
        container.ctx, container.payments, {}, json.dumps(note).encode()
    )
    return PaymentOutcome(order_id=order_id, outcome=outcome.value)
