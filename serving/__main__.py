"""``python -m serving``: start the gateway with uvicorn (settings from SKIN_* and .env)."""

from __future__ import annotations

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
    from serving.logs import configure

    configure(settings.log_format, settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # serving/logs.py's handler, not uvicorn's
        access_log=False,  # the gateway writes its own access line (serving/request_context.py)
        proxy_headers=True,
        timeout_graceful_shutdown=10,
        **server_options(settings),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
