"""The ichigo-stream client applications (microphone client and file streamer)."""
