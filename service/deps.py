"""Annotated dependencies: routes declare what they need and read like prose."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.state import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
