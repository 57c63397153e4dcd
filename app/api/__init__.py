"""All routers, gathered in one place."""

from fastapi import APIRouter

from app.api.routes import audit, health, jobs, labels, points, scores, series, webhooks
from app.api.routes import models as model_versions

api_router = APIRouter()
for module in (health, series, points, scores, labels, jobs, model_versions, webhooks, audit):
    api_router.include_router(module.router)
