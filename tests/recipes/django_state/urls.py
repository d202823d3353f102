from django.urls import path

from . import views

urlpatterns = [
    path("todos", views.create_todos),
    path("todos/<int:pk>", views.todo),
    path("todos/fail", views.create_then_fail),
]
