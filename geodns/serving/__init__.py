"""The answer path (bytes in, bytes out) and the UDP/TCP transports around it."""
