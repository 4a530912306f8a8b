"""The hub's events on an MQTT broker and operators' commands from it: [mqtt] in
hub.toml (hub/config/hub_toml.py INTEGRATIONS). settings.py checks the section,
bridge.py is the bridge (its docstring has the topic tree), outbox.py keeps events
until the broker has them, home_assistant.py is what Home Assistant discovers."""

from hub.integrations.mqtt.settings import DEFAULTS, check

__all__ = ["DEFAULTS", "check", "start"]


async def start(hub, settings):
    """Connect to the broker (in the background). -> the Bridge (await .close())."""
    from hub.integrations.mqtt.bridge import Bridge

    return Bridge(hub, settings)
