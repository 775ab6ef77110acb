"""``python -m serving``: start the gateway with uvicorn (settings from SKIN_* and .env)."""

from __future__ import annotations

import logging
import sys

from pydantic import ValidationError


def main() -> int:
    from serving.settings import get_settings

    try:
        settings = get_settings()
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, x['loc'])) or 'settings'}: {x['msg']}" for x in e.errors()
        )
        print(f"error: {problems}", file=sys.stderr)
        return 2
    import uvicorn

    from serving.app import create_app
    from serving.limits import server_options

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
        **server_options(settings),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
