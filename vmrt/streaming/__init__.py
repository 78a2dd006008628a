"""The CRI streaming server: exec, attach and port-forward over WebSocket and SPDY/3.1."""
