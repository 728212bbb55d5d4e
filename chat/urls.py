from django.urls import path

from . import views

app_name = "chat"
urlpatterns = [
    path("", views.home, name="home"),
    path("api/conversations/", views.conversation_list, name="conversation-list"),
    path("api/conversations/<int:conversation_id>/", views.conversation_detail, name="conversation"),
]
