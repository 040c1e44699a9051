"""MLflow tracking for the flows, one job per module: `store` (where runs go, checked before any compute), `registry`
(trained model versions), `runs` (logging what a flow computed) and `compare` (reading runs back for people).

All MLflow calls of the project live here. Tracking logs and never evaluates: metrics come from the evaluation code
(tasks/evaluation.py, flows/evaluate.py), so a tracking failure is only ever a tracking failure.
"""
