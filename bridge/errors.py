"""Errors whose message is complete advice for a person: what is wrong, where, and how to fix it.

The CLI prints these without a traceback; workers fail the one task concerned with the message as reason.
"""


class BridgeError(Exception):
    """Base class of every error the bridge raises on purpose."""


class UserInputError(BridgeError):
    """Bad input (config file, executor_config, command): the message names the field and the fix."""
