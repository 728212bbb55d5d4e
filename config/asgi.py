"""ASGI entry point: HTTP through Django, WebSockets through Channels.

Importing this module must not connect to the database or start any server.
"""

import logging
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from config.settings import describe_configuration  # noqa: E402

logging.getLogger("config").info("configuration: %s", describe_configuration())  # secrets masked

from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator

import chat.routing
from chat.live import InterruptAnswersOnShutdown
from chat.middleware import SocketAuthMiddlewareStack
from documents.body_limit import UploadBodyLimit
from monitoring.live import SamplerMiddleware

application = InterruptAnswersOnShutdown(
    SamplerMiddleware(
        ProtocolTypeRouter(
            {
                "http": UploadBodyLimit(django_asgi_app),
                "websocket": AllowedHostsOriginValidator(
                    SocketAuthMiddlewareStack(URLRouter(chat.routing.websocket_urlpatterns))
                ),
            }
        )
    )
)
