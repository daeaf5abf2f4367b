"""`python -m services.api`: serve the REST API with uvicorn."""

import uvicorn

from services.api.app import create_app
from shared.config import Settings
from shared.logging import configure_logging


def main() -> None:
    settings = Settings()
    configure_logging("api")
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),  # SIGTERM: finish in-flight requests
    )


if __name__ == "__main__":
    main()
