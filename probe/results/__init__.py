"""What a measurement is (the schema), what its figures are called (labels), how good it is (quality measures) and
how it is kept (results folders)."""

from .schema import METRICS, SCHEMA, Measurement, RunResult, RunSpec, Summary, final_figures, run_grid, strict_json

__all__ = [
    "METRICS",
    "SCHEMA",
    "Measurement",
    "RunResult",
    "RunSpec",
    "Summary",
    "final_figures",
    "run_grid",
    "strict_json",
]
