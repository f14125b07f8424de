"""PanopticClient asks again when a query's request is lost, and never repeats a request that changes the node.

A request sent just after discovery can be lost (the server may not know the client's reply reader yet).
These tests lose it for certain: a stand-in for panoptic_node's lifecycle services (real rclpy services in
this process) never answers the first request it gets. Whatever the machine's speed, an answer can then only
come from a resend; the resend period is a constructor argument, so no test waits the default 2 s.
"""

import threading

import pytest
import rclpy
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.task import Future

from panoptic_ros.ros.client import NODE_NAME, PanopticClient

pytestmark = pytest.mark.timeout(180)

NAMESPACE = "/client_resend"
BOUND_S = 60.0  # generous: discovery on a loaded machine


@pytest.fixture
def requests_seen():
    """Runs the stand-in services; the number of requests each has received so far."""
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node(NODE_NAME, namespace=NAMESPACE, context=context)
    seen = {"get_state": 0, "change_state": 0}
    never = Future()  # never done: a request waiting on it is never answered, as if it had been lost

    async def get_state(request, response):
        seen["get_state"] += 1
        if seen["get_state"] == 1:
            await never
        response.current_state.label = "inactive"
        return response

    async def change_state(request, response):
        seen["change_state"] += 1
        await never
        return response

    group = ReentrantCallbackGroup()  # a request left waiting must not hold back the next one
    node.create_service(GetState, "~/get_state", get_state, callback_group=group)
    node.create_service(ChangeState, "~/change_state", change_state, callback_group=group)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    yield seen
    executor.shutdown()
    spinner.join(timeout=BOUND_S)
    node.destroy_node()
    rclpy.shutdown(context=context)


def test_a_query_whose_first_request_is_lost_is_answered_after_a_resend(requests_seen):
    client = PanopticClient(NAMESPACE, outputs=(), resend_period=0.05)
    try:
        assert client.lifecycle_state(timeout=BOUND_S) == "inactive"
    finally:
        client.close()
    assert requests_seen["get_state"] >= 2  # the first one never had an answer


def test_a_transition_is_requested_once_even_when_it_gets_no_answer(requests_seen):
    client = PanopticClient(NAMESPACE, outputs=(), resend_period=0.01)
    try:
        client.lifecycle_state(timeout=BOUND_S)  # the stand-in is discovered and answering
        with pytest.raises(TimeoutError, match="change_state"):
            client.change_state("configure", timeout=1.0)
    finally:
        client.close()
    # A repeated transition request could configure twice; a lost one stays lost (at most the one request).
    assert requests_seen["change_state"] <= 1
