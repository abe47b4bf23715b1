"""The JSON API (/api/v1): ``api`` and the catch-all ``not_found_view``, routed in convo_site/urls.py."""

from .endpoints import api, not_found_view

__all__ = ["api", "not_found_view"]
