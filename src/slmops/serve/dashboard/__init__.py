"""The live dashboard served by slmops itself: ``/dashboard`` (HTML, JS, CSS; no CDN) and ``/dashboard/data`` (JSON).

The page and its two assets hold no data and are served without the key; the page reads the key
from its URL fragment (``/dashboard#key=…``, never sent to the server) and polls
``/dashboard/data`` with ``Authorization: Bearer``, which sits behind the same key as the API.
"""

from slmops.serve.dashboard.router import OPEN_PATHS, router

__all__ = ["OPEN_PATHS", "router"]
