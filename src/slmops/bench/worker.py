"""``python -m slmops.bench.worker``: benchmark one model in a fresh process (job as JSON on stdin).

It prints JSON lines on stdout: ``{"progress": n, "total": m}`` as runs finish, then
``{"result": {...}}``, or ``{"error": {"what", "why", "fix"}}`` for an slmops error (exit code 1).
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from slmops.bench.local import worker_main
    from slmops.errors import SlmopsError

    try:
        result = worker_main(sys.stdin.read())
    except SlmopsError as exc:
        sys.stdout.write(json.dumps({"error": exc.to_dict()}) + "\n")
        return 1
    sys.stdout.write(json.dumps({"result": result}, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
