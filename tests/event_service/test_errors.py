"""The error family: every exception the core and the worker define is an EventServiceError, and a builtin."""

from __future__ import annotations

import builtins
import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import event_service
import payload_runner
from event_service.errors import EventServiceError

PACKAGES = (event_service, payload_runner)
BUILTIN_EXCEPTIONS = {obj for obj in vars(builtins).values()
                      if inspect.isclass(obj) and issubclass(obj, BaseException)} - {Exception, BaseException}
# Exceptions that live outside an ``errors`` module, each with its reason (module.qualname: why).
ELSEWHERE: dict[str, str] = {}


def project_modules() -> list[ModuleType]:
    """Every module of the core and the worker (sub-packages too), imported; ``__main__`` modules left out."""
    modules: list[ModuleType] = list(PACKAGES)
    for package in PACKAGES:
        for found in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if found.name.rsplit(".", 1)[-1] != "__main__":
                modules.append(importlib.import_module(found.name))
    return modules


def project_exceptions() -> list[type[BaseException]]:
    """Every exception class defined in a module of the core or the worker."""
    found = {obj for module in project_modules() for obj in vars(module).values()
             if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__}
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def name_of(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


EXCEPTIONS = project_exceptions()


def test_the_walk_finds_the_family() -> None:
    names = {name_of(cls) for cls in EXCEPTIONS}
    assert {"event_service.errors.EventServiceError", "event_service.ledger.errors.TaskNotFoundError",
            "event_service.stores.errors.ObjectStoreError", "payload_runner.errors.ProtocolError"} <= names
    assert len(EXCEPTIONS) > 40


@pytest.mark.parametrize("cls", [cls for cls in EXCEPTIONS if cls is not EventServiceError], ids=name_of)
def test_every_error_is_an_event_service_error_and_a_builtin(cls: type[BaseException]) -> None:
    assert issubclass(cls, EventServiceError)
    builtin = [base.__name__ for base in cls.__mro__ if base in BUILTIN_EXCEPTIONS]
    assert builtin, f"{name_of(cls)} subclasses no builtin exception but Exception"


def test_the_family_lives_in_errors_modules() -> None:
    elsewhere = {name_of(cls) for cls in EXCEPTIONS if cls.__module__.rsplit(".", 1)[-1] != "errors"}
    assert elsewhere == set(ELSEWHERE)


def test_the_base_is_only_a_base() -> None:
    assert EventServiceError.__bases__ == (Exception,)
    assert [base for base in EventServiceError.__mro__ if base in BUILTIN_EXCEPTIONS] == []
