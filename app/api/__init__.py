"""All routers, gathered in one place."""

from fastapi import APIRouter

from app.api.routes import alarms, health, jobs, labels, points, scores, series
from app.api.routes import models as model_versions

api_router = APIRouter()
for module in (health, series, points, scores, labels, jobs, model_versions, alarms):
    api_router.include_router(module.router)
