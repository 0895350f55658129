"""What a trial measures: training (Lightning), latency (`latency.Timing`, paired with the
dense model; `onnx` in onnxruntime), and the measured objectives (`measured`).

Room rule: measure/ may import plan/space, models/data, hf, ui, config, objectives and the floors
below (tn, bonds); never study/, budget/, results/, report/ or a command, and no Optuna or MLflow:
it measures a model and returns typed values, others store them.
"""
