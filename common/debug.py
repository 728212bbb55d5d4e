"""What Django's debug page (DJANGO_DEBUG=1) may show of the settings."""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

from .masking import mask_url


class SettingsMaskingFilter(SafeExceptionReporterFilter):
    """Django hides settings named like secrets (KEY, TOKEN, PASS...). Ours also hold credentials
    under other names: the database and Redis URLs, the cache's LOCATION, the channel layer's hosts.
    Those are hidden by name, and any other URL carrying a password shows with it masked."""

    hidden_settings = re.compile(
        "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|DATABASE_URL|REDIS_URL|LOCATION",
        flags=re.IGNORECASE,
    )

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        if isinstance(cleansed, str) and "://" in cleansed:
            return mask_url(cleansed)
        return cleansed
