"""A minimal Django project (no database) served by squall through `wsgi.application`."""
