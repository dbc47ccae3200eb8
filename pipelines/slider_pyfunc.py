"""MLflow "models from code" entry point of the slider pyfunc model (see ``pipelines.registry``).

MLflow copies this file into the logged model and runs it on load instead of unpickling an object.
"""

from mlflow.models import set_model

from pipelines.registry import SliderPyfunc

set_model(SliderPyfunc())
