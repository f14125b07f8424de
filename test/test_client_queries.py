"""PanopticClient's queries of the node: asked again when a request is lost, never repeated when they change
the node, and waited on without holding back what the client receives.

A request sent just after discovery can be lost (the server may not know the client's reply reader yet).
These tests lose it for certain: a stand-in for panoptic_node's lifecycle services (real rclpy services in
this process) never answers the first request it gets. Whatever the machine's speed, an answer can then only
come from a resend; the resend period is a constructor argument, so no test waits the default 2 s.
"""

import threading

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.task import Future

from panoptic_ros.ros.client import NODE_NAME, PanopticClient

pytestmark = pytest.mark.timeout(180)

NAMESPACE = "/client_resend"
BOUND_S = 60.0  # generous: discovery on a loaded machine


@pytest.fixture
def stand_in():
    """Runs the stand-in services; the number of requests each has received so far, and its /diagnostics."""
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node(NODE_NAME, namespace=NAMESPACE, context=context, start_parameter_services=False)
    seen = {"get_state": 0, "change_state": 0, "get_parameters": 0}
    diagnostics = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
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

    def get_parameters(request, response):
        # Something for the client to receive while it waits for this answer, sent before the answer;
        # model_state "ok" from the third request on.
        seen["get_parameters"] += 1
        diagnostics.publish(DiagnosticArray())
        state = "ok" if seen["get_parameters"] >= 3 else "loading"
        response.values = [ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=state)]
        return response

    group = ReentrantCallbackGroup()  # a request left waiting must not hold back the next one
    node.create_service(GetState, "~/get_state", get_state, callback_group=group)
    node.create_service(ChangeState, "~/change_state", change_state, callback_group=group)
    node.create_service(GetParameters, "~/get_parameters", get_parameters, callback_group=group)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    yield seen, diagnostics
    executor.shutdown()
    spinner.join(timeout=BOUND_S)
    node.destroy_node()
    rclpy.shutdown(context=context)


def test_a_query_whose_first_request_is_lost_is_answered_after_a_resend(stand_in):
    requests_seen, _ = stand_in
    client = PanopticClient(NAMESPACE, outputs=(), resend_period=0.05)
    try:
        assert client.lifecycle_state(timeout=BOUND_S) == "inactive"
    finally:
        client.close()
    assert requests_seen["get_state"] >= 2  # the first one never had an answer


def test_a_transition_is_requested_once_even_when_it_gets_no_answer(stand_in):
    requests_seen, _ = stand_in
    client = PanopticClient(NAMESPACE, outputs=(), resend_period=0.01)
    try:
        client.lifecycle_state(timeout=BOUND_S)  # the stand-in is discovered and answering
        with pytest.raises(TimeoutError, match="change_state"):
            client.change_state("configure", timeout=1.0)
    finally:
        client.close()
    # A repeated transition request could configure twice; a lost one stays lost (at most the one request).
    assert requests_seen["change_state"] <= 1


def test_waiting_on_a_query_of_the_node_while_messages_arrive(stand_in):
    # Each answer comes after a /diagnostics message, which the client's spin thread stores under the client's
    # lock: waiting with that lock held (wait_for) would keep the answer from ever being taken.
    requests_seen, diagnostics = stand_in
    client = PanopticClient(NAMESPACE, outputs=(), resend_period=0.1)  # resends: requests before discovery
    try:
        client.wait_until(lambda: diagnostics.get_subscription_count() == 1, BOUND_S, "the client's /diagnostics")
        client.wait_until(lambda: client.get_parameters(["model_state"], timeout=BOUND_S)["model_state"] == "ok",
                          BOUND_S, "model_state ok", period=0.0)
    finally:
        client.close()
    assert requests_seen["get_parameters"] >= 3  # "ok" is the third answer
