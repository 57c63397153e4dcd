"""Container health probe: exit 0 when the URL answers 2xx within the timeout.

The image runs both `vigil serve` (probe /healthz on 8000) and `vigil worker` (probe its
metrics endpoint on 9101); VIGIL_HEALTHCHECK_URL picks the URL per service. Standard
library only, so the slim image needs no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/healthz"


def main() -> int:
    url = os.environ.get("VIGIL_HEALTHCHECK_URL") or DEFAULT_URL
    if not url.startswith(("http://127.0.0.1", "http://localhost")):
        print(f"refusing to probe a non-local URL: {url}", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 (local http only)
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
