"""The Hugging Face Space's entry point (``app_file: spaces_app.py`` in README.md's front matter).

Everything comes from the environment, which a Space sets in Settings -> Variables and Secrets:
the models (``VICHAT_MODELS_CONFIG``, else the machine's default), the votes database
(``VICHAT_VOTES_DB``: Spaces has no persistent /data any more, so point it at mounted storage or
export the votes regularly), limits (``VICHAT_*``) and API keys (``OPENAI_API_KEY`` for the judge),
which are read only by the code that needs them. docs/app.md lists every variable.
"""

from vichat.app.app import app_from_env, launch
from vichat.clitools import quiet_library_noise

quiet_library_noise()  # what `vichat serve` does: no unactionable library messages in the Space's logs

# Module-level `demo`, as Spaces and `gradio spaces_app.py` (hot reload) expect. Lenient: a models
# configuration, a votes database or a VICHAT_* value that cannot be used shows in the page and in
# the banner printed first (votes then live in memory) rather than crashing the Space into a loop.
demo = app_from_env(lenient=True)

if __name__ == "__main__":
    launch(demo)
