"""The ichigo-stream WebSocket server application (protocol v1; see docs/protocol.md)."""
