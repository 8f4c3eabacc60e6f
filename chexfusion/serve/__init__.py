"""The web demo: upload the images of one study, see its findings and where the model looked.

``create_app(run_dir_or_predictor)`` builds the FastAPI app (``app.py``);
``chexfusion serve`` runs it under uvicorn (``command.py``). The model is
loaded once, when the app is built, and shared by all requests.
"""

from .app import create_app
from .limits import ServeLimits

__all__ = ["create_app", "ServeLimits"]
