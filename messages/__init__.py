"""The wire: message schemas, the tensor codec, broker topology names and transports.

Nothing in this package decides anything about federated learning; it only moves and checks
bytes, so coordinator and participant agree on exactly one definition of each message.
"""
