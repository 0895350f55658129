"""The sensitivity profile and budgets: what each layer group costs and loses at each option
(`profile`, `cache`, `predict`, `calibration`), and the cheapest plan within a budget (`allocate`).

Room rule: budget/ may import measure/, plan/space, models/data, hf, ui, config and the floors
below (tn, bonds); never study/, results/, report/ or a command. It reads no Optuna storage: the
study hands it what it needs (`study.sensitivity` is the study's side of the profile).
"""
