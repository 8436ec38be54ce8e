"""A larger app, for memory measurements: FastAPI with 40 routes.

    python -m squall bench.apps.big_app:app --interface asgi --workers 2

It imports what a real service tends to (json, decimal, email, http.cookies,
sqlite3, pydantic) and declares a few pydantic models, path parameters and
query parameters, so that importing it builds a realistic amount of state
in each process: modules, classes, validators and the route table.
"""

from __future__ import annotations

import datetime
import decimal
import email.message
import email.utils
import enum
import http.cookies
import json
import os
import sqlite3
import uuid

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

app = FastAPI(title="squall bench big app")

DB = sqlite3.connect(":memory:", check_same_thread=False)


class Status(str, enum.Enum):
    active = "active"
    archived = "archived"


class Address(BaseModel):
    street: str
    city: str
    postcode: str = Field(max_length=12)
    country: str = "NL"


class User(BaseModel):
    id: int
    name: str = Field(min_length=1, max_length=80)
    email: str
    status: Status = Status.active
    address: Address | None = None
    tags: list[str] = []


class Item(BaseModel):
    id: int
    name: str
    price: decimal.Decimal = Field(ge=0, decimal_places=2)
    created: datetime.datetime
    owner: int | None = None


class Order(BaseModel):
    id: uuid.UUID
    user: int
    items: list[Item]
    note: str | None = None


class Page(BaseModel):
    offset: int
    limit: int
    total: int


@app.get("/")
async def root() -> dict[str, object]:
    return {"pid": os.getpid(), "app": "big"}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def _user(user_id: int) -> User:
    return User(
        id=user_id,
        name=f"user {user_id}",
        email=email.utils.formataddr((f"User {user_id}", f"u{user_id}@example.org")),
        address=Address(street="Main 1", city="Utrecht", postcode="3511AA"),
    )


def _item(item_id: int) -> Item:
    return Item(
        id=item_id,
        name=f"item {item_id}",
        price=decimal.Decimal(item_id) / 4,
        created=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
    )


def _register(resource: str, n: int) -> None:
    """Add list/get/query/create routes for /{resource}{n}: 4 routes per call."""
    base = f"/{resource}{n}"

    @app.get(base, name=f"list_{resource}{n}")
    async def list_things(
        offset: int = Query(0, ge=0),
        limit: int = Query(10, ge=1, le=100),
        q: str | None = Query(None, max_length=50),
    ) -> dict[str, object]:
        rows = [_item(i).model_dump(mode="json") for i in range(offset, offset + min(limit, 5))]
        page = Page(offset=offset, limit=limit, total=1000)
        return {"page": page.model_dump(), "q": q, "rows": rows}

    @app.get(base + "/{thing_id}", name=f"get_{resource}{n}")
    async def get_thing(thing_id: int, verbose: bool = False) -> User:
        if thing_id < 0:
            raise HTTPException(status_code=404, detail="not found")
        return _user(thing_id)

    @app.get(base + "/{thing_id}/orders/{order_id}", name=f"order_{resource}{n}")
    async def get_order(thing_id: int, order_id: uuid.UUID) -> Order:
        return Order(id=order_id, user=thing_id, items=[_item(1), _item(2)])

    @app.post(base, name=f"create_{resource}{n}", status_code=201)
    async def create_thing(user: User) -> User:
        return user


for _n, _resource in enumerate(["users", "items", "orders", "carts", "invoices"]):
    _register(_resource, _n)


@app.get("/cookies")
async def cookies() -> dict[str, str]:
    jar = http.cookies.SimpleCookie()
    jar["session"] = "abc"
    return {"cookie": jar.output(header="")}


@app.get("/mail/{to}")
async def mail(to: str, subject: str = "hello") -> dict[str, str]:
    message = email.message.EmailMessage()
    message["To"] = to
    message["Subject"] = subject
    message.set_content("body")
    return {"message": message.as_string()}


@app.get("/db/{key}")
async def db_get(key: str) -> dict[str, object]:
    row = DB.execute("select ?, sqlite_version()", (key,)).fetchone()
    return {"key": row[0], "sqlite": row[1]}


@app.get("/json")
async def raw_json(indent: int = Query(0, ge=0, le=8)) -> dict[str, str]:
    return {"dumped": json.dumps({"a": [1, 2, 3]}, indent=indent or None)}


@app.get("/decimal/{value}")
async def money(value: decimal.Decimal, places: int = 2) -> dict[str, str]:
    return {"rounded": str(round(value, places))}


def _static(path: str, n: int) -> None:
    @app.get(path, name=f"static_{n}")
    async def static() -> dict[str, object]:
        return {"path": path, "n": n}


for _n in range(13):
    _static(f"/static/{_n}", _n)
