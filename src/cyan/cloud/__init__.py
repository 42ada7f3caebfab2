"""The cloud domain: devices, sessions, function calls, events and connection attempts."""
