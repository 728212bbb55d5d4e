"""The one base of every error a chat user can see.

Each carries what the ``error`` frame says: a stable ``code``, one clear ``user_message`` and, for
limits, ``retry_after`` in seconds. Entry points catch ``ChatError`` once; anything else is a bug,
logged with its traceback and shown as ``internal_error``. (Zulip's ``JsonableError`` is the model.)
"""

from __future__ import annotations


class ChatError(Exception):
    """``detail`` is for the logs (``str(exc)``); ``user_message`` is what the user is shown."""

    code = "error"
    user_message = "The request failed."

    def __init__(self, detail: str = "", *, user_message: str | None = None, retry_after: int | None = None) -> None:
        if user_message is not None:
            self.user_message = user_message
        super().__init__(detail or self.user_message)
        self.retry_after = retry_after


class NotFound(ChatError):
    """An id the user may not see, or that does not exist: both look the same to them."""

    code = "not_found"

    def __init__(self, kind: str, object_id: int) -> None:
        super().__init__(user_message=f"{kind.capitalize()} {object_id} not found.")


class InternalError(ChatError):
    """A bug or an unexpected failure: the traceback goes to the log, never to the user."""

    code = "internal_error"
    user_message = "The server could not handle that message."
