"""The edge gateway process: WebRTC signaling, sessions, key frames to NATS (``python -m streaming.gateway``)."""
