"""Views that change Todos and return the transaction's txid."""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from .models import Todo
from .state import atomic_txid


class _Abort(Exception):
    pass


@csrf_exempt  # an API endpoint; protect it with your own auth
@require_POST
def create_todos(request: HttpRequest) -> JsonResponse:
    """POST a JSON list of titles: all are created in one transaction (one txid)."""
    titles = json.loads(request.body)
    with atomic_txid() as txid:
        ids = [Todo.objects.create(title=str(t)).pk for t in titles]
    return JsonResponse({"txid": txid, "ids": ids}, status=201)


@csrf_exempt
@require_http_methods(["PATCH", "DELETE"])
def todo(request: HttpRequest, pk: int) -> JsonResponse:
    with atomic_txid() as txid:
        item = Todo.objects.select_for_update().get(pk=pk)
        if request.method == "DELETE":
            item.delete()
        else:
            for field, value in json.loads(request.body).items():
                if field in ("title", "done"):
                    setattr(item, field, value)
            item.save()
    return JsonResponse({"txid": txid})


@csrf_exempt
@require_POST
def create_then_fail(request: HttpRequest) -> JsonResponse:
    """Creates a Todo, then fails: the transaction rolls back and nothing is published."""
    try:
        with atomic_txid() as txid:
            Todo.objects.create(title="doomed")
            raise _Abort
    except _Abort:
        return JsonResponse({"txid": txid, "error": "rolled back"}, status=409)
