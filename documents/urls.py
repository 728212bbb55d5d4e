from django.urls import path

from . import views

app_name = "documents"
urlpatterns = [
    path("api/documents/", views.document_list, name="document-list"),
    path("api/documents/<int:document_id>/", views.document_detail, name="document"),
]
