"""QoS of the node's topics: the named presets, and an image subscription whose reliability follows
the camera's publishers (`input_qos: auto`).

Every input subscription keeps only the newest message (keep last 1), whatever the QoS choice: the node
works on the newest frame, and a deeper reader history is a queue in front of it. Whenever the executor
thread falls behind the camera (it shares the GIL with the worker; under load Jazzy's Python executor takes
fewer than 30 large frames a second), a depth-10 history handed it frames ten frames old.

Why auto: a reliable subscription does not match a best-effort publisher at all (DDS reports an
incompatible-QoS event and no frame arrives), and a best-effort subscription to a reliable publisher
loses most large frames. Asking for what the publishers offer is the one choice that works with
every driver; with several publishers on one topic best effort is the only policy all of them match.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSPolicyKind,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
    qos_profile_system_default,
)

from panoptic_ros.ros.parameters import AUTO_QOS, QOS_PRESET_NAMES

# Their reliability and durability; every use sets its own history depth (input_profile, output_depth).
QOS_PRESETS: dict[str, QoSProfile] = dict(zip(QOS_PRESET_NAMES, (
    qos_profile_sensor_data,  # best effort
    QoSProfile(depth=10),  # reliable
    qos_profile_system_default,
), strict=True))


def input_profile(preset: str) -> QoSProfile:
    """A preset's reliability and durability, keeping only the newest message (see the module doc)."""
    profile = copy.copy(QOS_PRESETS[preset])
    profile.history, profile.depth = HistoryPolicy.KEEP_LAST, 1
    return profile


def auto_reliability(offered: Iterable[ReliabilityPolicy]) -> ReliabilityPolicy | None:
    """Reliable when every publisher offers reliable, best effort when any offers best effort (the only
    policy such a publisher matches); None when there is no publisher (nothing to decide)."""
    offered = list(offered)
    if not offered:
        return None
    if all(policy == ReliabilityPolicy.RELIABLE for policy in offered):
        return ReliabilityPolicy.RELIABLE
    return ReliabilityPolicy.BEST_EFFORT


def auto_profile(reliability: ReliabilityPolicy) -> QoSProfile:
    """Keep last 1 (the node only ever wants the newest frame), volatile (matches volatile and transient-local
    publishers), with the given reliability."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


def reliability_name(policy: ReliabilityPolicy) -> str:
    return "reliable" if policy == ReliabilityPolicy.RELIABLE else "best effort"


class InputSubscription:
    """One camera topic's subscription. With `auto`, `refresh()` looks at the publishers and re-subscribes when
    their reliability changes; with a preset the QoS stays fixed. Incompatible-QoS events go to `on_problem`
    with the fix in words."""

    # Before any publisher is seen: best effort matches every publisher, so the first frames are not refused.
    INITIAL = ReliabilityPolicy.BEST_EFFORT

    def __init__(self, node: Node, msg_type: Any, topic: str, callback: Callable[[Any], None], preset: str,
                 on_problem: Callable[[str], None]) -> None:
        self._node, self._msg_type, self._topic, self._callback = node, msg_type, topic, callback
        self.preset = preset
        self._on_problem = on_problem
        self._subscription = None
        self._subscribe(auto_profile(self.INITIAL) if preset == AUTO_QOS else input_profile(preset))

    @property
    def topic(self) -> str:
        """The fully resolved topic name."""
        return self._subscription.topic_name

    @property
    def profile(self) -> QoSProfile:
        """The QoS subscribed with now."""
        return self._profile

    @property
    def reliability(self) -> ReliabilityPolicy:
        return self._profile.reliability

    def publisher_count(self) -> int:
        return self._subscription.get_publisher_count()

    def offered_reliabilities(self) -> list[ReliabilityPolicy]:
        return [info.qos_profile.reliability for info in self._node.get_publishers_info_by_topic(self.topic)]

    def refresh(self) -> bool:
        """Auto only: subscribe again if the publishers now call for another reliability. True when it did."""
        if self.preset != AUTO_QOS:
            return False
        wanted = auto_reliability(self.offered_reliabilities())
        if wanted is None or wanted == self.reliability:
            return False
        self._node.get_logger().info(f"{self.topic}: publishers offer {reliability_name(wanted)}; subscribing "
                                     f"{reliability_name(wanted)} (input_qos auto)")
        self._subscribe(auto_profile(wanted))
        return True

    def _subscribe(self, profile: QoSProfile) -> None:
        # The new subscription exists before the old one goes, so no frame finds no subscriber.
        events = SubscriptionEventCallbacks(incompatible_qos=self._incompatible)
        old = self._subscription
        self._subscription = self._node.create_subscription(self._msg_type, self._topic, self._callback, profile,
                                                            event_callbacks=events)
        self._profile = profile
        if old is not None:
            self._node.destroy_subscription(old)

    def _incompatible(self, info: Any) -> None:
        policy = QoSPolicyKind(info.last_policy_kind).name
        offered = ", ".join(sorted({reliability_name(p) for p in self.offered_reliabilities()})) or "unknown"
        self._on_problem(f"a publisher on {self.topic} has QoS incompatible with this subscription ({policy}; "
                         f"subscribed {reliability_name(self.reliability)} with input_qos {self.preset}, publishers "
                         f"offer {offered}): set input_qos to auto (or SENSOR_DATA for best-effort cameras)")

    def destroy(self) -> None:
        if self._subscription is not None:
            self._node.destroy_subscription(self._subscription)
            self._subscription = None
