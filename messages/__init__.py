"""The wire: message schemas, the tensor codec, broker topology names and transports.

Nothing in this package decides anything about federated learning; it only moves and checks
bytes, so coordinator and participant agree on exactly one definition of each message. It
reads no environment variable: every setting (a chunk size, a queue bound) arrives as an
argument, so what two processes must agree on cannot differ by how each was started.
"""
