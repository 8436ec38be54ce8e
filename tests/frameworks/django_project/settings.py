"""Settings for the test project: DEBUG off, no database, no installed apps."""

from __future__ import annotations

SECRET_KEY = "squall-tests-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

ROOT_URLCONF = "tests.frameworks.django_project.urls"
WSGI_APPLICATION = "tests.frameworks.django_project.wsgi.application"

INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
DATABASES: dict[str, dict[str, str]] = {}

USE_TZ = True
USE_I18N = False
DEFAULT_CHARSET = "utf-8"
