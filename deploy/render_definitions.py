#!/usr/bin/env python3
"""RabbitMQ definitions for one fedq federation, where fedq is not installed: runs
``fedq deploy users`` (``src/fedq/broker_users.py``, standard library only) from this
checkout, with the same flags.

    python deploy/render_definitions.py --federation demo --participants 4 \\
        --out deploy/secrets/definitions.json --env-out deploy/.env
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from fedq.broker_users import main

if __name__ == "__main__":
    sys.exit(main())
