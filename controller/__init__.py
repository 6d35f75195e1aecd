"""Cunxiang's central logic: settings, storage, the MQTT bus, dispatch, acknowledgements, presence."""
