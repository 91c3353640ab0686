"""The MLflow "models from code" entry of a vigsp model: MLflow runs this file when it loads the
model, instead of unpickling an object (see pyfunc_model.py)."""

from mlflow.models import set_model

from vigsp.inference.pyfunc_model import VigspModel

set_model(VigspModel())
