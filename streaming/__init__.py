"""Edge ingress: WebRTC signaling and gateway, and the wire protocol shared by every service."""
