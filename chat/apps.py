from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        from .presence import sign_out

        def close_sockets_of_the_session(sender, request, user, **kwargs) -> None:
            sign_out(request.session.session_key if request is not None else None)

        user_logged_out.connect(close_sockets_of_the_session, weak=False, dispatch_uid="chat-sign-out")
