"""The data directory's privacy: only the server's user may read what it holds."""

from __future__ import annotations

import os
from pathlib import Path


def secure_data_dir(data_dir: Path) -> None:
    """The data directory 0700 and what is in it 0600 (fixing older, laxer ones).

    Only the server's user may read the database, the secret and the artifacts.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for root, _directories, files in os.walk(data_dir):  # (links are not followed)
        os.chmod(root, 0o700)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o600)
