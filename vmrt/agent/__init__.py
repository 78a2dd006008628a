"""The vmrt guest agent.

Runs as PID 1 inside every sandbox VM. It imports only the standard library,
grpcio/protobuf and the generated stubs in ``vmrt.agent.v1``; a test enforces
that nothing from the host side creeps in, because the guest image ships this
package alone.
"""

AGENT_VERSION = "0.1.0"
