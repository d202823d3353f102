"""Recipe: Django models published as State Protocol change events (a small Django app).

``models.py`` (the model), ``state.py`` (the producer, the signal handlers and
``atomic_txid()``), ``views.py`` (views that return the transaction's txid) and ``urls.py``.
Add ``"django_state"`` to ``INSTALLED_APPS`` and set ``settings.STATE_STREAM_URL``.
"""
