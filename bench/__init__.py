"""Benchmarks of a whole Cunxiang controller: real HTTP, real MQTT broker, simulated terminals.

`cunxiang bench fanout` (bench.fanout) times one emergency broadcast from the HTTP POST to every
terminal's acknowledgements; bench.terminals is its helper process that runs the simulated
terminals. See docs/performance.md for what it measures and figures from one machine.
"""
