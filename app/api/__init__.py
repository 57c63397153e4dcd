"""All routers, gathered in one place."""

from fastapi import APIRouter

from app.api.routes import alarms, audit, health, jobs, labels, points, scores, series, webhooks
from app.api.routes import models as model_versions

api_router = APIRouter()
routers = (health, series, points, scores, labels, jobs, model_versions, alarms, webhooks, audit)
for module in routers:
    api_router.include_router(module.router)
