"""kilnapp: the small demo application the app role runs under gunicorn (WSGI callable kilnapp.wsgi:app)."""

__version__ = "0.1.0"
