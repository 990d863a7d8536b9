"""The embedders: the transformer (transformer.py), the static tier (static.py) and the fast ONNX query path
(onnx.py), loaded through load.py. Nothing is imported here: the models load only when asked for."""
