"""Static files storage: ServeStatic's hashed, compressed names, never failing a page over a missing one."""

from urllib.parse import urljoin

from django.utils.encoding import filepath_to_uri
from servestatic.storage import CompressedManifestStaticFilesStorage


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    """Hashed names from the manifest that collectstatic writes (``make run`` runs it). A file that is
    not collected (collectstatic not run yet, a file added since) is linked by its plain name instead
    of raising: a page, and above all the 500 page, must not fail on its favicon."""

    def url(self, name, force=False):
        try:
            return super().url(name, force)
        except ValueError:
            return urljoin(self.base_url, filepath_to_uri(name))
