"""The embedders: the transformer (transformer.py), the static tier (static.py) and the fast query paths that
need no torch (numpy_bert.py with wordpiece.py; onnx.py for other models; both checked by query_check.py), loaded
through load.py. Nothing is imported here: the models load only when asked for."""
