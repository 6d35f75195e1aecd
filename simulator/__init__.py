"""Simulated loudspeaker terminals that speak protocol v1 over their own real MQTT connections.

They run the same `devices.terminal_core` state machine a real terminal agent runs, so what the
controller sees from them is what it would see from a county's hardware (minus the sound).
"""
