"""The Kaggle API client the kit talks to: the kaggle package's ``KaggleApi``, authenticated."""

from __future__ import annotations

import contextlib
import io

from kzlib.errors import EnvironmentProblem


def real_api():
    """The kaggle package's API client, authenticated (credentials: ~/.kaggle, KAGGLE_* variables)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except (Exception, SystemExit) as e:
        raise EnvironmentProblem(f"the Kaggle API is not usable here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                 "put your API token in ~/.kaggle/kaggle.json (or set KAGGLE_USERNAME and "
                                 "KAGGLE_KEY, or KAGGLE_API_TOKEN)") from None
    return api
