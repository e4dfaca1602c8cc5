"""Fixtures of the deployment checks: the service tests' tiny ShapesWorld data and the tiny
multi-task release trained by our trainer (tests/service/conftest.py), re-exported here so the
compose topology test serves the same model."""

from tests.service.conftest import demo_release, image_bytes, shapes_root

__all__ = ["demo_release", "image_bytes", "shapes_root"]
