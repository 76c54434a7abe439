"""Model assets: a vendor's ONNX model, described by a signed manifest.

* :mod:`cleanroom.models.manifest`: the manifest (pure; the core install);
* :mod:`cleanroom.models.onnx`: describe and load model bytes with onnxruntime,
  from memory, after the enclave's checks (the ``[server]`` extra);
* :mod:`cleanroom.models.score`: score an Arrow table with a loaded model (pure);
* :mod:`cleanroom.models.convert`: the vendor's conversion of scikit-learn,
  LightGBM and XGBoost models to ONNX (the ``[ml]`` extra).

Only ONNX is ever executed; nothing in this package unpickles, and nothing
loads a model from a file path. See docs/models.md.
"""

from cleanroom.errors import ConversionError, MissingExtraError, ModelRefusedError
from cleanroom.models.manifest import ModelDescription, ModelManifest, TensorSpec

__all__ = [
    "ConversionError",
    "MissingExtraError",
    "ModelDescription",
    "ModelManifest",
    "ModelRefusedError",
    "TensorSpec",
]
